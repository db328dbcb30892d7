"""Attach mode's environment file: a stable place an IDE configuration can point at once.

Decisions (pure, apart from `prepare_dir`; files are written by `bridge.local.env.write_private`):

- Without `--env-file`, attach mode writes `.bridge/NAME<suffix>` under the current directory
  (NAME: the swapped Deployment; the suffix follows `--env-syntax`, `.env` for dotenv), so the
  path is the same for every session of that Deployment from that directory: a launch
  configuration names it once. The file is removed when the session ends (it holds the pod's
  secrets, and stale values must not look current).
- `.bridge/` is created with mode 0700 and a `.gitignore` of `*`, so git ignores it without the
  user's own `.gitignore` being touched.
- The "attached" line names that file; `ATTACHED_PREFIX` is what IDE tasks wait for.
"""

from __future__ import annotations

import re
from pathlib import Path

from bridge.errors import BridgeError
from bridge.local import env as envmod

BRIDGE_DIR = ".bridge"
GITIGNORE = "# Written by bridge: environment files holding the pod's secrets.\n*\n"
SUFFIXES = {"dotenv": ".env", "json": ".json", "sh": ".sh", "csh": ".csh", "fish": ".fish",
            "powershell": ".ps1", "cmd": ".cmd", "compose": ".compose.yaml"}
# What bridge prints once attach mode holds the swap (progress lines start with "bridge: ").
ATTACHED_PREFIX = "attached: "
ATTACHED_LINE_PATTERN = r"^bridge: attached: "
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")


def default_env_file(cwd: Path, name: str, syntax: str = "dotenv") -> Path:
    """Where attach mode writes the environment of Deployment `name` when no --env-file is
    given. `name` must be a Kubernetes object name (it becomes a file name)."""
    if not _DNS_NAME.match(name) or ".." in name:
        raise BridgeError(f"{name!r} is not a Kubernetes object name; give --env-file")
    return cwd / BRIDGE_DIR / (name + SUFFIXES.get(syntax, ".env"))


def attached_message(listen: list[str], env_file: str | None) -> str:
    """The line attach mode prints once the swap is held (after "bridge: ")."""
    where = f" with the environment in {env_file}" if env_file else ""
    return (f"{ATTACHED_PREFIX}start your service listening on {', '.join(listen)}{where}; "
            "press Ctrl-C to end the swap")


def prepare_dir(directory: Path) -> None:
    """Create `directory` (0700) with a `.gitignore` ignoring everything in it, once."""
    envmod.private_dir(directory)  # 0700, or an existing one that is this user's alone
    try:
        ignore = directory / ".gitignore"
        if not ignore.exists():
            ignore.write_text(GITIGNORE, encoding="utf-8")
    except OSError as e:
        raise BridgeError(f"cannot create {directory}: {e.strerror}; give --env-file") from None
