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
- `hold_back`: the pod's variables that would make a tool on the laptop load, run or fetch
  code, trust other certificates or send traffic where the pod chose are kept out of the
  child's environment unless the user names them (`--env-allow NAME`). They are classified
  by families (`FAMILIES`: the loader and C library, shells, make, compilers, cargo, go, the
  interpreters and their package managers, git, ssh, editors and pagers, proxies, trust
  anchors, cluster and cloud tools), each by the names and namespaces (prefixes) its tools
  read. The pod's environment may come from a ConfigMap anyone in the namespace can edit; it
  must not reach the laptop as code. `(kept, held_back)` is what every env writer uses.
- Files are created with mode 0600 (they hold secrets) and replaced atomically.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import BridgeError
from bridge.local.envsyntax import comment_safe

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

@dataclass(frozen=True)
class Family:
    """A class of variables that make a tool on the laptop load, run or fetch code, or trust
    or reach what the pod chose: `names` exactly, every name starting with one of `prefixes`
    (a namespace the tool owns: new options appear in it with every release), and names
    matching `pattern`. `except_names` are the family's plain app settings (NODE_ENV)."""

    label: str
    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    pattern: str = ""
    except_names: frozenset[str] = frozenset()

    def matches(self, upper: str) -> bool:
        if upper in self.except_names:
            return False
        return (upper in self.names or upper.startswith(self.prefixes)
                or bool(self.pattern and re.fullmatch(self.pattern, upper)))


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# The hold-back rule, by families. A name is compared in upper case (npm reads npm_config_*,
# curl http_proxy: a lower-case spelling is the same variable to some tool). Why a family table
# and not a list of names: a tool reads its whole namespace (CARGO_*, GIT_*, NPM_CONFIG_*,
# PIP_*, LD_*...), and a list of the names known today misses the next release's; where a
# tool shares a namespace with app settings (make's CC, Go's GO*), the names are listed.
# A pure allowlist of "app settings" cannot be written (an app's names are its own), so this
# is the widest rule that still passes them: everything not a tool's is the app's.
FAMILIES: tuple[Family, ...] = (
    Family("dynamic loader and C library", prefixes=("LD_", "DYLD_", "MALLOC_", "GCONV_"),
           names=_names("GCONV_PATH GETCONF_DIR GLIBC_TUNABLES HOSTALIASES LOCALDOMAIN LOCPATH "
                        "NIS_PATH NLSPATH RESOLV_HOST_CONF RES_OPTIONS TZDIR")),
    Family("shell start-up and hooks", prefixes=("BASH_FUNC_", "BASH_"),
           names=_names("ENV KSH_ENV PROMPT_COMMAND SHELLOPTS BASHOPTS IFS CDPATH GLOBIGNORE "
                        "ZDOTDIR FPATH PROMPT RPROMPT HISTFILE INPUTRC MAIL MAILPATH SHLVL "
                        "TMOUT PROMPT_DIRTRIM POSIXLY_CORRECT"),
           pattern=r"PS[0-9]"),
    Family("make", names=_names("MAKEFLAGS MFLAGS MAKEFILES GNUMAKEFLAGS MAKELEVEL MAKE "
                                "MAKESHELL MAKEOVERRIDES MAKECMDGOALS")),
    Family("compilers and linkers",
           names=_names("CC CXX CPP LD AR AS NM RANLIB STRIP OBJCOPY OBJDUMP READELF FC F77 "
                        "F90 CFLAGS CXXFLAGS CPPFLAGS LDFLAGS LDLIBS LIBS FFLAGS ASFLAGS "
                        "ARFLAGS OBJCFLAGS CPATH C_INCLUDE_PATH CPLUS_INCLUDE_PATH "
                        "OBJC_INCLUDE_PATH LIBRARY_PATH COMPILER_PATH GCC_EXEC_PREFIX "
                        "DEPENDENCIES_OUTPUT SUNPRO_DEPENDENCIES CONFIG_SITE CONFIG_SHELL "
                        "M4 YACC LEX SCONSFLAGS"),
           prefixes=("CCACHE_", "DISTCC_", "PKG_CONFIG", "CMAKE_", "MESON", "NINJA_",
                     "AUTOCONF", "AUTOMAKE", "ACLOCAL", "LIBTOOL", "CGO_", "QMAKE", "BAZEL")),
    Family("cargo and rustc", prefixes=("CARGO", "RUSTC", "RUSTUP", "RUSTDOC"),
           names=_names("RUSTFLAGS")),
    # Go's toolchain reads GO + letters (GOFLAGS, GOTOOLCHAIN, GOPROXY, GOSUMDB, GOAUTH...);
    # GOOGLE_* and other GO..._ names are not Go's. The runtime's tuning knobs load nothing.
    Family("go", pattern=r"GO[A-Z0-9]+", names=_names("GCCGO GCCGOTOOLDIR"),
           except_names=_names("GOGC GOMAXPROCS GOMEMLIMIT GOTRACEBACK")),
    Family("python", prefixes=("PYTHON", "PIP_", "UV_", "POETRY_", "PIPENV_", "PDM_", "HATCH_",
                               "CONDA", "PYENV", "TWINE_", "VIRTUAL_ENV"),
           except_names=_names("PYTHONUNBUFFERED PYTHONDONTWRITEBYTECODE PYTHONIOENCODING "
                               "PYTHONUTF8 PYTHONHASHSEED")),
    Family("node, npm, yarn, pnpm", prefixes=("NODE_", "NPM_", "YARN_", "PNPM_", "COREPACK_",
                                              "BUN_", "DENO_", "ELECTRON_"),
           names=_names("NODE NODEJS_ORG_MIRROR NVM_DIR"),
           except_names=_names("NODE_ENV")),
    Family("perl", prefixes=("PERL",)),
    Family("ruby", prefixes=("RUBY", "GEM_", "BUNDLE_", "BUNDLER_")),
    Family("java and the jvm", prefixes=("JAVA_", "JDK_", "_JAVA_", "MAVEN_", "GRADLE_",
                                         "SBT_", "ANT_", "KOTLIN_"),
           names=_names("CLASSPATH M2_HOME JAVA_HOME"),
           except_names=_names("JAVA_VERSION")),
    Family("lua", prefixes=("LUA_",)),
    Family("other interpreters", prefixes=("DOTNET_", "COMPLUS_", "CORECLR_", "MONO_", "PHP_INI",
                                           "R_PROFILE", "R_ENVIRON", "R_LIBS", "ERL_", "JULIA_",
                                           "GHC", "CABAL_", "TCL", "TK_LIBRARY", "GUILE_",
                                           "OCAML", "RAKU", "ELIXIR_"),
           names=_names("PHPRC")),
    Family("git and other version control", prefixes=("GIT_", "HGRC", "SVN_", "CVS_", "BZR_"),
           names=_names("HGEDITOR HGPLAIN HGPLAINEXCEPT HGENCODING HGMERGE")),
    Family("ssh", prefixes=("SSH_", "SUDO_")),
    Family("editors, pagers and terminals",
           names=_names("EDITOR VISUAL PAGER MANPAGER MANOPT BROWSER LESS LESSOPEN LESSCLOSE "
                        "LESSKEY LESSKEYIN LESSSECURE LESSEDIT TERMINFO TERMINFO_DIRS TERMCAP "
                        "MAILCAPS MAILRC WWW_HOME FCEDIT"),
           prefixes=("SYSTEMD_", "BAT_", "DELTA_", "VIM", "EMACS", "NVIM")),
    Family("proxies", pattern=r".*_PROXY", prefixes=("SOCKS",),
           names=_names("NO_PROXY ALL_PROXY")),
    Family("trust anchors and TLS", prefixes=("OPENSSL_", "SSL_CERT", "GNUTLS_", "NSS_"),
           names=_names("SSLKEYLOGFILE CURL_CA_BUNDLE REQUESTS_CA_BUNDLE CURL_HOME WGETRC NETRC "
                        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH NIX_SSL_CERT_FILE HTTPLIB2_CA_CERTS "
                        "WEBSOCKET_CLIENT_CA_BUNDLE CA_BUNDLE")),
    # Tools that talk to the user's clusters and clouds with the user's own credentials: the
    # pod must not point them somewhere else, nor name a config that runs a credential helper.
    Family("cluster, container and cloud tools",
           prefixes=("DOCKER_", "BUILDKIT_", "PODMAN_", "CONTAINERS_", "KUBECTL_", "HELM_",
                     "CLOUDSDK_", "AZURE_CONFIG", "TF_CLI", "TF_PLUGIN", "VAULT_",
                     "AWS_ENDPOINT_URL", "GOOGLE_EXTERNAL_ACCOUNT"),
           names=_names("KUBECONFIG CONTAINER_HOST AWS_CONFIG_FILE AWS_SHARED_CREDENTIALS_FILE "
                        "AWS_CA_BUNDLE GOOGLE_APPLICATION_CREDENTIALS BOTO_CONFIG "
                        "TORSOCKS_CONF_FILE")),
)


def held_back_family(name: str, value: str = "") -> str | None:
    """The family (a short label) that makes bridge hold `name` back, or None to pass it."""
    upper = name.upper()
    for family in FAMILIES:
        if family.matches(upper):
            return family.label
    if "%" in name or value.startswith("() {"):  # a bash exported function, old or new style
        return "shell start-up and hooks"
    return None


def is_held_back(name: str, value: str = "") -> bool:
    """True for a variable that would make a tool on this machine load, run or fetch code,
    trust other certificates, or send its traffic where the pod chose (see FAMILIES)."""
    return held_back_family(name, value) is not None


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
        elif is_held_back(name, value):
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
             "# pass --env-allow NAME to bridge to take one, or edit it in here yourself\n",
             "# (line breaks and control characters in a value are shown escaped).\n"]
    for name in sorted(held):
        value = held[name]
        if is_shell_name(name):
            lines.append(f"# {name}={comment_safe(_quote(value))}\n")
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


def private_dir(directory: Path) -> None:
    """Make `directory`, and every missing directory above it, with mode 0700; or check an
    existing one: a directory of this user's that no one else can write to. Another user who
    can write there could replace bridge's files (a session record, the environment an IDE
    reads) or read them as they are made. BridgeError (one line: what is wrong, what to do;
    nothing was changed) otherwise."""
    missing: list[Path] = []
    probe = directory
    while not os.path.lexists(probe) and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    try:
        for level in reversed(missing):
            os.mkdir(level, 0o700)
    except FileExistsError:
        pass  # made meanwhile: checked below like any existing one
    except OSError as exc:
        raise BridgeError(f"cannot create {directory}: {exc.strerror}") from None
    problem = dir_problem(directory)
    if problem:
        raise BridgeError(problem)


def dir_problem(directory: Path) -> str | None:
    """Why bridge must not keep its files in `directory` (one line), or None."""
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"cannot use {directory}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"cannot use {directory}: it is not a directory; remove it and try again"
    if st.st_uid != os.geteuid():
        return (f"refusing to keep bridge's files in {directory}: it belongs to uid "
                f"{st.st_uid}, not to you (uid {os.geteuid()}); remove it (bridge makes its "
                "own, mode 0700) and try again; nothing was changed")
    if st.st_mode & 0o022:
        return (f"refusing to keep bridge's files in {directory}: others can write to it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 700 {directory}` and "
                "try again; nothing was changed")
    return None


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
