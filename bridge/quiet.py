"""Only bridge speaks on the user's terminal: its dependencies' warnings and log records do not.

A dependency's warning (asyncssh's CryptographyDeprecationWarning when a newer cryptography is
installed, a kubernetes client deprecation...) tells the user nothing they can act on; it is
noise ahead of bridge's one-line errors. bridge's own warnings still show, as Python's default
filters decide; a user who asks for warnings (`python -W ...`, PYTHONWARNINGS) gets exactly what
they asked for. Installed by the entry point before any dependency is imported: a warning given
at import time (asyncssh's) would otherwise be out already.
"""

from __future__ import annotations

import logging
import sys
import warnings

# A module name that is not bridge's: warnings attributed to it are ignored. (warnings matches
# this with re.match against the module the warning is attributed to.)
NOT_BRIDGE = r"(?!bridge(\.|$))"


def dependencies() -> None:
    """Ignore every warning not attributed to a bridge module, unless the user gave -W or
    PYTHONWARNINGS; and keep dependencies' log records off stderr (logging's last-resort
    handler prints WARNING and above of any logger without a handler)."""
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", module=NOT_BRIDGE)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
