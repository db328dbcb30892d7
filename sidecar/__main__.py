"""`python -m sidecar`: the proxy pod's SSH server. Settings come from BRIDGE_* variables."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import warnings

# The modules below import asyncssh (and cryptography): they are imported in main(), after
# _quiet_dependencies(), so a warning given at import time does not reach the pod log.

EXIT_BAD_SETTINGS = 2

# A module that is not the sidecar's: warnings attributed to it are ignored (re.match).
NOT_SIDECAR = r"(?!sidecar(\.|$))"


def _quiet_dependencies() -> None:
    """Only the sidecar writes to its log: ignore dependencies' warnings (asyncssh's
    CryptographyDeprecationWarning under a newer cryptography), unless -W or PYTHONWARNINGS
    asks for them. The sidecar's own warnings stay."""
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", module=NOT_SIDECAR)


def _configure_logging() -> None:
    from sidecar.server import EscapingFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s sidecar: %(message)s"))
    root = logging.getLogger("sidecar")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    # asyncssh's own INFO lines repeat ours (and name every channel); keep its warnings.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("asyncssh").addHandler(handler)  # escaped like ours
    logging.getLogger("asyncssh").propagate = False
    # "socket.send() raised exception" after a peer vanished is noise, not news.
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def main() -> int:
    _quiet_dependencies()
    from sidecar import podenv
    from sidecar import settings as settings_mod
    from sidecar.server import serve

    try:
        settings = settings_mod.load(os.environ)
    except settings_mod.SettingsError as exc:
        print(f"sidecar: bad settings: {exc}; nothing was started", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    _configure_logging()
    environ = podenv.pod_environment(os.environ, podenv.load_image_env())
    try:
        return asyncio.run(serve(settings, environ))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
