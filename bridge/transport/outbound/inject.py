"""How the laptop process is pointed at the session's proxy: torsocks (inject) or proxy
variables (proxy), and which mode a session gets.

torsocks (LD_PRELOAD) sends every TCP connect() and getaddrinfo()/gethostbyname() of the
process and its children to the SOCKS5 server; its configuration file (TORSOCKS_CONF_FILE)
names the server and the session's credentials, allows listening (AllowInbound) and lets
127.0.0.1/localhost stay local (AllowOutboundLocalhost).
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from bridge.errors import BridgeError

INSTALL_HINT = "install torsocks (apt install torsocks / brew install torsocks)"


class Mode(enum.Enum):
    INJECT = "inject"
    PROXY = "proxy"
    NONE = "none"


def choose_mode(asked: str | None, torsocks: str | None) -> tuple[Mode, str | None]:
    """(mode, a hint to print or None). Raises BridgeError when inject is asked for without
    torsocks; the caller has changed nothing yet."""
    if asked is None:
        if torsocks:
            return Mode.INJECT, None
        return Mode.PROXY, ("torsocks not found: the command gets proxy variables only "
                            f"(programs that ignore them reach the cluster only with torsocks; "
                            f"{INSTALL_HINT})")
    mode = Mode(asked)
    if mode is Mode.INJECT and not torsocks:
        raise BridgeError(f"--outbound inject needs torsocks, which is not on PATH; "
                          f"{INSTALL_HINT}, or use --outbound proxy; nothing was changed")
    return mode, None


def find_torsocks(path: str | None = None) -> str | None:
    return shutil.which("torsocks", path=path)


def config_text(host: str, port: int, user: str, password: str) -> str:
    """A torsocks.conf for one session (see torsocks.conf(5))."""
    return (
        "# written by bridge for one session; removed when it ends\n"
        f"TorAddress {host}\n"
        f"TorPort {port}\n"
        f"SOCKS5Username {user}\n"
        f"SOCKS5Password {password}\n"
        "AllowInbound 1\n"
        "AllowOutboundLocalhost 1\n"
    )


def write_config(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def library_path(torsocks: str, env: Mapping[str, str] | None = None) -> str | None:
    """The LD_PRELOAD value torsocks itself sets, asked from the torsocks script (its install
    prefix differs between Debian, Homebrew and source builds)."""
    clean = {k: v for k, v in (env or os.environ).items() if k != "LD_PRELOAD"}
    try:
        out = subprocess.run(
            [torsocks, "printenv", "LD_PRELOAD"],  # (`torsocks sh` is its `show` command)
            env=clean, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value and os.path.exists(value) else None


def torsocks_argv(torsocks: str, argv: Sequence[str], path: str | None = None) -> list[str]:
    """`argv` run under torsocks exactly as given.

    The torsocks script reads its first word as its own before taking it for a command: `on`,
    `off`, `show` and `sh` are its subcommands (`torsocks sh -c 'exit 7'` prints LD_PRELOAD and
    exits 0), anything starting with `-` is its option, and it has no `--` (2.3.0 and its
    source today: `torsocks -- sh` looks for a program named `--`). A word with a `/` is never
    one of those, so the command is named by its path: found on `path` (the child's PATH) as
    the shell would, or kept as given when it already names a path (`./` put before one that
    starts with `-`). Its basename, and every argument, stay as given."""
    if not argv:
        raise BridgeError("no command to run under torsocks")
    first = argv[0]
    if "/" in first:
        named = "./" + first if first.startswith("-") else first
    else:
        found = shutil.which(first, path=path)
        if found is None:
            raise BridgeError(f"{first}: command not found (looked on PATH)")
        named = found if "/" in found else "./" + found  # (an empty PATH entry: the cwd)
    return [torsocks, named, *argv[1:]]


def proxy_env(socks_url: str, http_url: str) -> dict[str, str]:
    """Proxy variables, in both spellings, with localhost exempt."""
    no_proxy = "localhost,127.0.0.1,::1"
    env = {"ALL_PROXY": socks_url, "HTTP_PROXY": http_url, "HTTPS_PROXY": http_url,
           "NO_PROXY": no_proxy}
    env.update({k.lower(): v for k, v in list(env.items())})
    return env


def torsocks_env(conf_file: str) -> dict[str, str]:
    # Quiet (`torsocks -q`): the app sees its ordinary errors; torsocks' own lines about "Tor"
    # (e.g. "Connection refused to Tor SOCKS") would only mislead.
    return {"TORSOCKS_CONF_FILE": conf_file, "TORSOCKS_LOG_LEVEL": "1"}
