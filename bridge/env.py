"""The child's environment: the pod's variables overlaid on the laptop's, and env files.

Decisions, all pure functions of data (file writing is the only I/O here):

- `overlay`: the child starts from the laptop's environment; every variable the pod
  has replaces the laptop's, except the ones that describe the *laptop session*
  (`LOCAL_KEEP`, plus any `LC_*` / `XDG_*`): the laptop's HOME, PATH, locale,
  display, agent socket... stay, and a pod value for them is never taken, even
  when the laptop has none (a pod's `TMPDIR=/data/tmp` or `HOME=/root` does not
  exist on the laptop). The pod's `KUBERNETES_*` and service-link variables are
  kept: code that reads them behaves as in the pod.
- `write_dotenv`: one `NAME='value'` per variable, single-quoted as a POSIX shell
  does (`'` written as `'\\''`), so multi-line values, quotes, backslashes and `$`
  survive `set -a; . FILE` in sh/bash and python-dotenv reads typical values
  (anything without `'` or a double backslash) unchanged. `parse_dotenv` is the
  exact inverse. Names that are not shell identifiers cannot be written in this
  format; they are left out and returned, so the caller can say so.
- Files are created with mode 0600 (they hold secrets) and replaced atomically.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from bridge.errors import BridgeError

# Variables that belong to the laptop session, never taken from the pod.
LOCAL_KEEP: frozenset[str] = frozenset(
    {
        "HOME",
        "PATH",
        "HOSTNAME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
        "COLORTERM",
        "PWD",
        "OLDPWD",
        "LANG",
        "LANGUAGE",
        "TMPDIR",
        "TZ",
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "XAUTHORITY",
        "SSH_AUTH_SOCK",
        "SSH_AGENT_PID",
        "DBUS_SESSION_BUS_ADDRESS",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "KUBECONFIG",
    }
)
# Prefixes of variable families that belong to the laptop session.
LOCAL_KEEP_PREFIXES: tuple[str, ...] = ("LC_", "XDG_")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def is_local(name: str) -> bool:
    """True if `name` describes the laptop session and is never taken from the pod."""
    return name in LOCAL_KEEP or name.startswith(LOCAL_KEEP_PREFIXES)


def overlay(local: Mapping[str, str], pod: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: `local` with every non-local variable of `pod` on top."""
    merged = dict(local)
    merged.update((name, value) for name, value in pod.items() if not is_local(name))
    return merged


def is_shell_name(name: str) -> bool:
    """True if `name` can be assigned by a POSIX shell (and so written to a dotenv file)."""
    return _NAME.match(name) is not None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def format_dotenv(env: Mapping[str, str]) -> tuple[str, list[str]]:
    """The dotenv text for `env` (sorted by name) and the names left out (not shell names)."""
    lines: list[str] = []
    skipped: list[str] = []
    for name in sorted(env):
        if is_shell_name(name):
            lines.append(f"{name}={_quote(env[name])}\n")
        else:
            skipped.append(name)
    return "".join(lines), skipped


def write_dotenv(path: str | Path, env: Mapping[str, str]) -> list[str]:
    """Write `env` as a dotenv file (mode 0600); returns the names that had to be left out."""
    text, skipped = format_dotenv(env)
    _write_private(Path(path), text)
    return skipped


def write_json(path: str | Path, env: Mapping[str, str]) -> None:
    """Write `env` as one JSON object (mode 0600)."""
    _write_private(Path(path), json.dumps(dict(env), indent=2, sort_keys=True) + "\n")


def parse_dotenv(text: str) -> dict[str, str]:
    """Read what `write_dotenv` wrote (also blank lines, `#` comments, `export NAME=...`).

    Values are single-quoted shell words (concatenations like `'it'\\''s'` included),
    or bare words without quotes, spaces or backslashes. Anything else raises
    BridgeError naming the line.
    """
    env: dict[str, str] = {}
    pos = 0
    line_no = 1
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            pos = end + 1
            line_no += 1
            continue
        offset = len(line) - len(line.lstrip())
        body = stripped
        if body.startswith("export ") or body.startswith("export\t"):
            body = body[len("export") :].lstrip()
            offset = line.index(body)
        name, sep, _ = body.partition("=")
        if not sep or not is_shell_name(name):
            raise BridgeError(f"env file line {line_no}: expected NAME=VALUE, got {line[:40]!r}")
        pos += offset + len(name) + 1
        value, pos, line_no = _read_word(text, pos, line_no)
        rest_end = text.find("\n", pos)
        rest_end = len(text) if rest_end < 0 else rest_end
        rest = text[pos:rest_end].strip()
        if rest and not rest.startswith("#"):
            raise BridgeError(f"env file line {line_no}: unexpected text after the value of {name}")
        env[name] = value
        pos = rest_end + 1
        line_no += 1
    return env


def _read_word(text: str, pos: int, line_no: int) -> tuple[str, int, int]:
    """One shell word of single-quoted parts, `\\'` and bare characters, from `pos`."""
    parts: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == "'":
            close = text.find("'", pos + 1)
            if close < 0:
                raise BridgeError(f"env file line {line_no}: unterminated quote")
            quoted = text[pos + 1 : close]
            parts.append(quoted)
            line_no += quoted.count("\n")
            pos = close + 1
        elif text.startswith("\\'", pos):
            parts.append("'")
            pos += 2
        elif char in " \t\n#":
            break
        elif char in "\"\\`$":
            raise BridgeError(f"env file line {line_no}: unsupported character {char!r} in value")
        else:
            parts.append(char)
            pos += 1
    return "".join(parts), pos, line_no


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically with mode 0600 (the file may hold secrets)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BridgeError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly([tmp])
        raise BridgeError(f"cannot write {path}: {exc.strerror}") from None


def _unlink_quietly(paths: Iterable[str]) -> None:
    for name in paths:
        try:
            os.unlink(name)
        except OSError:
            pass
