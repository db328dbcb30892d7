"""`python -m sidecar`: the proxy pod's SSH server. Settings come from BRIDGE_* variables."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from sidecar import podenv
from sidecar import settings as settings_mod
from sidecar.server import EscapingFormatter, serve

EXIT_BAD_SETTINGS = 2


def _configure_logging() -> None:
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
