"""The pod's environment written in the syntax of a shell or a tool (`--env-syntax`).

One pure function per syntax, `render_<syntax>(env, held_back=None) -> Rendered`: the text,
and the names that cannot be written in that syntax at all (left out, for the caller to name
in a warning). A *value* the syntax cannot carry is an error (EnvSyntaxError names every such
variable and why, and the syntaxes that can carry it): a silently changed value is worse than
none. `held_back` (variables bridge keeps from the process, e.g. loader or proxy settings) is
written commented out where the syntax has comments, so the user sees them and can opt in;
JSON has no comments and leaves them out. A held-back line is one comment line in every
reader: each character any reader ends a line at (\\n, \\r, \\v, \\f, U+0085, U+2028,
U+2029, the rest of C0 and C1) is written as an escape (`comment_safe`).

The syntaxes, and which reader each is for (each checked against that reader in the tests):

- `dotenv`: one `NAME=VALUE` line per variable, read the same by VS Code's `envFile`
  (vscode-python-debugger: a line is `NAME=VALUE`; matching outer `'`/`"` are stripped, `\\n`
  in a quoted value becomes a newline, `${NAME}` is substituted and `\\$` becomes `$`), the
  JetBrains EnvFile plugin (outer quotes stripped, `\\n` becomes a newline) and python-dotenv
  (single quotes decode `\\\\` and `\\'`; double quotes decode C escapes and interpolate
  `${NAME}`). Each value gets the quoting all three read identically: bare when it has
  nothing they treat specially, else `'...'`, else `"..."` (a newline written as `\\n`, which
  only double quotes agree on). A value no quoting makes them agree on (one with `${`, `\\$`,
  a literal `\\n`, both kinds of quotes, ...) is an error naming `json` and `sh` as exact
  alternatives. `docker run --env-file` does not unquote at all: it reads the bare values
  (plain words, numbers, URLs) the same, and quoted ones with their quotes; for docker use
  `compose` (docker compose reads the file it makes) or pass `--env` flags.
- `sh`: `export NAME='value'` (POSIX single quotes, `'` as `'\\''`): `. FILE` in sh, dash,
  bash, zsh, ksh; any value.
- `csh`: `setenv NAME 'value'` for csh and tcsh (`source FILE`); `!` escaped (history), a
  newline written as backslash-newline inside the quotes.
- `fish`: `set -gx NAME 'value'` (`\\\\` and `\\'` escaped): `source FILE` in fish.
- `powershell`: `$env:NAME = 'value'` (`'` doubled; `${env:NAME}` for names that are not
  identifiers): `. ./FILE.ps1` in PowerShell; any value.
- `cmd`: `set "NAME=value"` lines of a batch file (`call FILE.cmd`), `%` doubled; cmd cannot
  hold a newline, a carriage return or (safely) a `"` in a value: those are errors. `!` is
  literal only without delayed expansion (the default).
- `compose`: a docker compose file fragment, `services: {SERVICE: {environment: {...}}}`,
  values as double-quoted YAML strings with `$` written `$$` (compose interpolates `$`).
- `json`: one JSON object, exact for any value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bridge.errors import BridgeError

SYNTAXES = ("dotenv", "json", "sh", "csh", "fish", "powershell", "cmd", "compose")
DEFAULT_SYNTAX = "dotenv"

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# VS Code's envFile only reads names matching this (an underscore-only name is skipped).
_VSCODE_NAME = re.compile(r"_*[A-Za-z][A-Za-z0-9_]*\Z")


class EnvSyntaxError(BridgeError):
    """Some values cannot be written in the chosen syntax."""


@dataclass
class Rendered:
    text: str
    left_out: dict[str, str] = field(default_factory=dict)  # name -> why it is not written


Renderer = Callable[..., Rendered]


def _check(syntax: str, problems: dict[str, str], alternatives: str) -> None:
    if problems:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
        raise EnvSyntaxError(f"cannot write the environment as {syntax}: {listed} "
                             f"(use --env-syntax {alternatives}, which can)")


# Every character at which some reader of these files ends a line, and so a comment: \n and
# \r (every shell; PowerShell at a bare \r), \v, \f and \x1c-\x1e (Python's splitlines, as
# in python-dotenv's and other readers), NEL U+0085, U+2028 and U+2029 (YAML 1.1, PyYAML and
# docker-compose v1; JavaScript readers). With them the rest of C0, DEL and C1: NUL ends a C
# reader's line, ^Z ends a batch file, and a terminal acts on ESC when the file is shown.
_ENDS_A_COMMENT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\v": "\\v", "\f": "\\f"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def comment_safe(text: str) -> str:
    """`text` with every character any reader could end a comment at written as an escape
    (`\\n`, `\\x85`, `\\u2028`...): one line, whatever the reader."""
    return _ENDS_A_COMMENT.sub(_escape_char, text)


def _comment(text: str, mark: str = "# ", eol: str = "\n") -> str:
    """`text` (one rendered assignment) as one comment line: a value's line breaks and control
    characters are shown escaped, never ending the comment (such a value cannot be uncommented
    as it is: take it with --env-allow)."""
    body = text[: -len(eol)] if text.endswith(eol) else text
    return mark + comment_safe(body) + eol


def _render(env: Mapping[str, str], held_back: Mapping[str, str] | None,
            name_ok: Callable[[str], str | None], value: Callable[[str, str], str],
            syntax: str, alternatives: str, comment: str = "# ",
            header: str = "", eol: str = "\n") -> Rendered:
    out: list[str] = [header] if header else []
    left_out: dict[str, str] = {}
    problems: dict[str, str] = {}
    sections = [(env, False)]
    if held_back:
        sections.append((held_back, True))
    for variables, commented in sections:
        if commented:
            out.append(f"{comment}held back by bridge (uncomment to use; line breaks and control "
                       f"characters are shown escaped):{eol}")
        for name in sorted(variables):
            why = name_ok(name)
            if why:
                left_out[name] = why
                continue
            try:
                line = value(name, variables[name])
            except ValueError as e:
                if commented:
                    left_out[name] = str(e)
                else:
                    problems[name] = str(e)
                continue
            out.append(_comment(line, comment, eol) if commented else line)
    _check(syntax, problems, alternatives)
    return Rendered("".join(out), left_out)


def _shell_name(name: str) -> str | None:
    return None if _SHELL_NAME.match(name) else "not a shell variable name"


# -- dotenv --------------------------------------------------------------------------------

# Characters after which a backslash means something to one of the readers (in either quoting).
_DOTENV_BARE_SAFE = re.compile(r"[A-Za-z0-9_@%+,./:=\-\[\]~^*?()<>|&;!]+\Z")
_DOUBLE_ESCAPES = "\\'\"abfnrtv$"  # python-dotenv's C escapes and VS Code's \$ and \n
_SINGLE_ESCAPES = "\\'n$"  # python-dotenv's \\ and \' and VS Code's \n and \$


def _dotenv_name(name: str) -> str | None:
    if not _VSCODE_NAME.match(name):
        return "not a name VS Code's envFile reads"
    return None


def _has_escape(value: str, escapes: str) -> bool:
    return any(value[i + 1 : i + 2] in escapes for i, c in enumerate(value) if c == "\\") \
        or value.endswith("\\")


def _dotenv_value(name: str, value: str) -> str:
    if "${" in value:
        raise ValueError("has '${' (VS Code and python-dotenv would substitute it)")
    if any(c in value for c in "\r\u2028\u2029"):
        raise ValueError("has a carriage return or a line separator (VS Code ends lines there)")
    if value == "" or _DOTENV_BARE_SAFE.match(value):
        return f"{name}={value}\n"
    if "\n" not in value and "'" not in value and not _has_escape(value, _SINGLE_ESCAPES):
        return f"{name}='{value}'\n"
    if '"' not in value and not _has_escape(value, _DOUBLE_ESCAPES):
        return f'{name}="' + value.replace("\n", "\\n") + '"\n'
    if "\\" in value:
        raise ValueError("has a backslash the readers treat differently in every quoting")
    raise ValueError("has both kinds of quotes (or a newline and a double quote)")


def render_dotenv(env: Mapping[str, str],
                  held_back: Mapping[str, str] | None = None) -> Rendered:
    """`NAME=VALUE` lines that VS Code, JetBrains EnvFile and python-dotenv read the same."""
    return _render(env, held_back, _dotenv_name, _dotenv_value, "dotenv", "json or sh")


# -- POSIX sh ------------------------------------------------------------------------------


def sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def render_sh(env: Mapping[str, str], held_back: Mapping[str, str] | None = None) -> Rendered:
    """`export NAME='value'` lines for `. FILE` in any POSIX shell."""
    return _render(env, held_back, _shell_name,
                   lambda n, v: f"export {n}={sh_quote(v)}\n", "sh", "json")


# -- csh / tcsh ----------------------------------------------------------------------------


def _csh_value(name: str, value: str) -> str:
    if "\r" in value:
        raise ValueError("has a carriage return")
    quoted = "'" + value.replace("'", "'\\''").replace("!", "\\!").replace("\n", "\\\n") + "'"
    return f"setenv {name} {quoted}\n"


def render_csh(env: Mapping[str, str], held_back: Mapping[str, str] | None = None) -> Rendered:
    """`setenv NAME 'value'` lines for `source FILE` in csh and tcsh."""
    return _render(env, held_back, _shell_name, _csh_value, "csh", "sh or json")


# -- fish ----------------------------------------------------------------------------------


def _fish_value(name: str, value: str) -> str:
    return f"set -gx {name} '" + value.replace("\\", "\\\\").replace("'", "\\'") + "'\n"


def render_fish(env: Mapping[str, str], held_back: Mapping[str, str] | None = None) -> Rendered:
    """`set -gx NAME 'value'` lines for `source FILE` in fish."""
    return _render(env, held_back, _shell_name, _fish_value, "fish", "json")


# -- PowerShell ----------------------------------------------------------------------------


def _powershell_value(name: str, value: str) -> str:
    if _SHELL_NAME.match(name):
        target = f"$env:{name}"
    else:
        target = "${env:" + re.sub(r"([`{}])", r"`\1", name) + "}"
    # Single-quoted strings are verbatim; only ' (and its typographic forms) is doubled.
    quoted = "'" + re.sub(r"(['\u2018\u2019\u201a\u201b])", r"\1\1", value) + "'"
    return f"{target} = {quoted}\n"


def render_powershell(env: Mapping[str, str],
                      held_back: Mapping[str, str] | None = None) -> Rendered:
    """`$env:NAME = 'value'` lines for `. ./FILE.ps1` in PowerShell."""
    return _render(env, held_back, lambda n: None if n and "\0" not in n else "empty name",
                   _powershell_value, "powershell", "json")


# -- cmd.exe -------------------------------------------------------------------------------


def _cmd_name(name: str) -> str | None:
    if not name or "=" in name or any(c in name for c in '"\r\n%!^'):
        return "not a name cmd's `set` can write"
    return None


def _cmd_value(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("has a line break (cmd cannot hold one)")
    if '"' in value:
        raise ValueError("has a double quote (cmd's `set` cannot quote it safely)")
    return f'set "{name}=' + value.replace("%", "%%") + '"\r\n'


def render_cmd(env: Mapping[str, str], held_back: Mapping[str, str] | None = None) -> Rendered:
    """`set "NAME=value"` lines of a batch file for cmd.exe (CRLF line ends)."""
    return _render(env, held_back, _cmd_name, _cmd_value, "cmd", "powershell or json",
                   comment="REM ", header="@echo off\r\n", eol="\r\n")


# -- docker compose ------------------------------------------------------------------------


# Inside a YAML double-quoted scalar, YAML 1.1 folds NEL, U+2028 and U+2029 like a line break
# (a changed value) and refuses DEL, C1 and a BOM: written as \\u escapes, which JSON has too.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff]")


def _yaml_string(value: str) -> str:
    # A JSON string is a YAML double-quoted scalar; $ is doubled for compose's interpolation.
    quoted = json.dumps(value, ensure_ascii=False).replace("$", "$$")
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def render_compose(env: Mapping[str, str], held_back: Mapping[str, str] | None = None,
                   service: str = "app") -> Rendered:
    """A compose file fragment giving SERVICE the environment (merge it with `-f`)."""
    return _render(env, held_back, lambda n: None if n and "=" not in n else "empty or has '='",
                   lambda n, v: f"      {_yaml_string(n)}: {_yaml_string(v)}\n",
                   "compose", "json", comment="# ",
                   header=f"services:\n  {_yaml_string(service)}:\n    environment:\n")


# -- JSON ----------------------------------------------------------------------------------


def render_json(env: Mapping[str, str], held_back: Mapping[str, str] | None = None) -> Rendered:
    """One JSON object. JSON has no comments: held-back variables are left out (and named)."""
    left_out = {name: "held back (JSON has no comments to show it in)"
                for name in (held_back or {})}
    return Rendered(json.dumps(dict(env), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    left_out)


RENDERERS: dict[str, Renderer] = {
    "dotenv": render_dotenv, "json": render_json, "sh": render_sh, "csh": render_csh,
    "fish": render_fish, "powershell": render_powershell, "cmd": render_cmd,
    "compose": render_compose,
}


def render(syntax: str, env: Mapping[str, str], held_back: Mapping[str, str] | None = None,
           *, service: str = "app") -> Rendered:
    """The environment in `syntax` (one of SYNTAXES)."""
    if syntax == "compose":
        return render_compose(env, held_back, service=service)
    try:
        renderer = RENDERERS[syntax]
    except KeyError:
        raise BridgeError(f"unknown env syntax {syntax!r}; use one of "
                          + ", ".join(SYNTAXES)) from None
    return renderer(env, held_back)
