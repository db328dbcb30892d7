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
- `hold_back`: the pod's variables that would make the laptop run code or send traffic
  somewhere the pod chose (loader, interpreter, shell-hook, tool-hook and proxy variables:
  `HELD_BACK`, `HELD_BACK_PREFIXES`, `*_PROXY` in any case) are kept out of the child's
  environment unless the user names them (`--env-allow NAME`). The pod's environment may
  come from a ConfigMap anyone in the namespace can edit; it must not reach the laptop as
  code. `(kept, held_back)` is what every env writer uses.
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

# Variables that load code into, or redirect, a process started with them: held back from the
# pod's environment unless allowed by name.
HELD_BACK: frozenset[str] = frozenset(
    {
        # shells: startup files, hooks, imported functions
        "BASH_ENV", "ENV", "PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS4", "SHELLOPTS",
        "BASHOPTS", "IFS", "CDPATH", "GLOBIGNORE", "ZDOTDIR", "FPATH", "PROMPT",
        "KSH_ENV",
        # dynamic loaders
        "GCONV_PATH", "LOCPATH", "NLSPATH", "MALLOC_CHECK_", "HOSTALIASES", "RESOLV_HOST_CONF",
        "GETCONF_DIR", "TZDIR",
        # interpreters
        "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONINSPECT",
        "PYTHONBREAKPOINT", "PYTHONEXECUTABLE", "PYTHONPLATLIBDIR", "PYTHONSAFEPATH",
        "PYTHONWARNINGS", "PYTHONDEBUG", "PYTHONPYCACHEPREFIX", "VIRTUAL_ENV",
        "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE", "NODE_EXTRA_CA_CERTS",
        "NODE_TLS_REJECT_UNAUTHORIZED", "NPM_CONFIG_PREFIX",
        "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB", "PERL_MB_OPT", "PERL_MM_OPT",
        "RUBYOPT", "RUBYLIB", "RUBYSHELL", "GEM_HOME", "GEM_PATH", "BUNDLE_GEMFILE",
        "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "JAVA_OPTIONS", "JAVA_OPTS",
        "CLASSPATH", "JAVA_HOME", "MAVEN_OPTS", "GRADLE_OPTS",
        "DOTNET_STARTUP_HOOKS", "DOTNET_ADDITIONAL_DEPS", "COMPlus_EnableDiagnostics",
        "PHPRC", "PHP_INI_SCAN_DIR", "LUA_INIT", "LUA_PATH", "LUA_CPATH", "TCLLIBPATH",
        "R_PROFILE", "R_PROFILE_USER", "R_ENVIRON", "R_ENVIRON_USER", "ERL_AFLAGS",
        "ERL_FLAGS", "ERL_ZFLAGS", "ELIXIR_ERL_OPTIONS", "GOFLAGS", "CGO_LDFLAGS",
        "CARGO_HOME", "RUSTC_WRAPPER", "RUSTFLAGS", "RUSTDOCFLAGS",
        # tools the command may start
        "EDITOR", "VISUAL", "PAGER", "MANPAGER", "BROWSER", "LESSOPEN", "LESSCLOSE",
        "SUDO_ASKPASS", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "OPENSSL_CONF", "OPENSSL_ENGINES",
        "SSLKEYLOGFILE", "CURL_HOME", "WGETRC", "INPUTRC", "TERMINFO", "TERMINFO_DIRS",
        "MAIL", "HISTFILE", "NPM_CONFIG_USERCONFIG", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
        "PIP_CONFIG_FILE", "PIP_TRUSTED_HOST", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "KUBECONFIG", "DOCKER_HOST", "DOCKER_CONFIG",
        "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS",
        "TORSOCKS_CONF_FILE", "GLIBC_TUNABLES", "MONO_ENV_OPTIONS", "MONO_PATH",
        "CORECLR_PROFILER", "CORECLR_PROFILER_PATH", "CORECLR_ENABLE_PROFILING",
        "PYTHONNOUSERSITE", "PYTHONCASEOK", "PERL_UNICODE", "PERLIO", "PERL5SHELL",
        "RUBYLIB_PREFIX", "SHLVL",
        # proxies without the _PROXY suffix
        "ALL_PROXY", "NO_PROXY", "SOCKS_SERVER", "SOCKS5_SERVER",
    }
)
# Families: loaders (LD_*, DYLD_*), exported shell functions (BASH_FUNC_*), git's and
# ssh's command hooks (GIT_*), and the interpreters' option families.
HELD_BACK_PREFIXES: tuple[str, ...] = ("LD_", "DYLD_", "BASH_FUNC_", "GIT_", "NPM_CONFIG_",
                                       "CORECLR_", "TORSOCKS_", "GCONV_", "MALLOC_")


def is_held_back(name: str) -> bool:
    """True for a variable that would load code into the command (or a program it starts) or
    send its traffic through a proxy the pod chose."""
    upper = name.upper()
    return (name in HELD_BACK or upper in HELD_BACK or upper.startswith(HELD_BACK_PREFIXES)
            or upper.endswith("_PROXY") or "%" in name)


def hold_back(pod: Mapping[str, str], allow: Iterable[str] = ()) -> tuple[dict[str, str],
                                                                           dict[str, str]]:
    """`(kept, held_back)`: the pod's variables split into those the command may get and those
    held back (see `is_held_back`), except the ones named in `allow`. Laptop-session variables
    (`is_local`) are in neither: the laptop's own stay."""
    allowed = set(allow)
    kept: dict[str, str] = {}
    held: dict[str, str] = {}
    for name, value in pod.items():
        if name in allowed:
            kept[name] = value
        elif is_local(name):
            continue
        elif is_held_back(name) or value.startswith("() {"):  # an old bash imports a function
            held[name] = value
        else:
            kept[name] = value
    return kept, held


def held_back_line(held: Iterable[str]) -> str:
    """The one line bridge prints about held-back variables ("" when there are none)."""
    names = sorted(held)
    if not names:
        return ""
    shown = ", ".join(_printable_name(n) for n in names)
    return (f"held back from the pod's environment (they could run code or redirect traffic "
            f"on this machine; allow one with --env-allow NAME): {shown}")


def _printable_name(name: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in
                   name)[:80]


def format_held_back(held: Mapping[str, str]) -> str:
    """Held-back variables as comments in a dotenv file: visible, never loaded."""
    if not held:
        return ""
    lines = ["# Held back by bridge (they could run code or redirect traffic on this machine);\n",
             "# pass --env-allow NAME to bridge to take one, or edit it in here yourself.\n"]
    for name in sorted(held):
        value = held[name]
        if is_shell_name(name):
            quoted = _quote(value).replace("\n", "\n# ")
            lines.append(f"# {name}={quoted}\n")
        else:
            lines.append(f"# (not a shell name) {_printable_name(name)}\n")
    return "".join(lines)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def is_local(name: str) -> bool:
    """True if `name` describes the laptop session and is never taken from the pod."""
    return name in LOCAL_KEEP or name.startswith(LOCAL_KEEP_PREFIXES)


def overlay(local: Mapping[str, str], pod: Mapping[str, str],
            allow: Iterable[str] = ()) -> dict[str, str]:
    """The child's environment: `local` with the pod's variables that `hold_back` keeps on
    top (a held-back one never replaces or adds to the laptop's)."""
    merged = dict(local)
    merged.update(hold_back(pod, allow)[0])
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


def write_dotenv(path: str | Path, env: Mapping[str, str],
                 held_back: Mapping[str, str] | None = None) -> list[str]:
    """Write `env` as a dotenv file (mode 0600), `held_back` after it commented out; returns
    the names that had to be left out."""
    text, skipped = format_dotenv(env)
    write_private(Path(path), text + format_held_back(held_back or {}))
    return skipped


def write_json(path: str | Path, env: Mapping[str, str]) -> None:
    """Write `env` as one JSON object (mode 0600)."""
    write_private(Path(path), json.dumps(dict(env), indent=2, sort_keys=True) + "\n")


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


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically with mode 0600 (the file may hold secrets)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BridgeError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
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
