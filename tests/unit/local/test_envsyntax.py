"""Every `--env-syntax` read back by its real reader: sh/dash, bash, fish, csh and tcsh,
python-dotenv, PyYAML for compose (docker compose itself is not installed here), json. Values
a syntax cannot carry are refused, by name. PowerShell and cmd.exe are not in Debian: their
writers are checked as text only (see the skip reasons)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bridge.local import envsyntax as es

TRICKY = {
    "NEWLINES": "line one\nline two\n",
    "SINGLE": "it's",
    "DOUBLE": 'say "hi"',
    "DOLLAR": "$HOME $(id) `id` $1",
    "BRACED": "${HOME}",
    "EQUALS": "a=b==c",
    "BACKSLASH": "C:\\dir \\n \\\\ \\' end\\",
    "UNICODE": "héllo ☃ 😀 日本",
    "EMPTY": "",
    "BANG": "wow! !! !$ !-1",
    "SPACES": "  lead and trail  ",
    "HASH": "a #b #c",
    "TAB": "a\tb",
    "JSONISH": '{"a": [1, "x y"], "b": null}',
    "PLAIN": "postgres://user@db:5432/app?x=1",
}
HELD = {"LD_PRELOAD": "/tmp/evil.so", "PYTHONPATH": "/x:/y z"}


def _run_env(cmd: list[str]) -> dict[str, str]:
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if item)


def _shell(path: Path, prog: str) -> dict[str, str]:
    """The environment after `prog` read `path`, starting from an empty environment."""
    if shutil.which(prog) is None:
        pytest.skip(f"{prog} is not installed (scripts/bootstrap installs it)")
    source = {"sh": '. "$1"', "bash": '. "$1"', "fish": "source $argv[1]",
              "tcsh": "source $1", "bsd-csh": "source $1"}[prog]
    flags = {"bash": ["--noprofile", "--norc"], "fish": ["--no-config"], "tcsh": ["-f"],
             "bsd-csh": ["-f"]}.get(prog, [])
    if prog in ("tcsh", "bsd-csh"):  # csh has no positional args with -c: pass it inline
        script = f"source {path}; exec /usr/bin/env -0"
        return _run_env(["env", "-i", shutil.which(prog) or prog, *flags, "-c", script])
    script = f"{source}; exec /usr/bin/env -0"
    extra = [str(path)] if prog == "fish" else ["sh", str(path)]
    return _run_env(["env", "-i", shutil.which(prog) or prog, *flags, "-c", script, *extra])


def _written(tmp_path: Path, syntax: str, env: dict[str, str],
             held: dict[str, str] | None = None) -> Path:
    path = tmp_path / f"env.{syntax}"
    path.write_text(es.render(syntax, env, held).text, encoding="utf-8", newline="")
    return path


@pytest.mark.parametrize(("syntax", "prog"), [
    ("sh", "sh"), ("sh", "bash"), ("fish", "fish"), ("csh", "tcsh"), ("csh", "bsd-csh")])
def test_shells_read_every_tricky_value(tmp_path: Path, syntax: str, prog: str) -> None:
    got = _shell(_written(tmp_path, syntax, TRICKY, HELD), prog)
    assert {k: got.get(k) for k in TRICKY} == TRICKY
    assert "LD_PRELOAD" not in got and "PYTHONPATH" not in got  # held back: commented out


@pytest.mark.parametrize(("syntax", "prog"), [
    ("sh", "bash"), ("fish", "fish"), ("csh", "tcsh")])
def test_held_back_variables_are_there_to_uncomment(tmp_path: Path, syntax: str,
                                                    prog: str) -> None:
    text = es.render(syntax, {"A": "1"}, HELD).text
    uncommented = "".join(line[2:] if line.startswith("# ") and "held back by" not in line
                          else line for line in text.splitlines(keepends=True))
    path = tmp_path / "uncommented"
    path.write_text(uncommented)
    got = _shell(path, prog)
    assert {k: got.get(k) for k in ("A", *HELD)} == {"A": "1", **HELD}
    # A value with a line break stays on its one comment line, the break shown escaped.
    assert "# export X='a\\nb'\n" in es.render("sh", {}, {"X": "a\nb"}).text


def test_shell_syntaxes_leave_out_names_a_shell_cannot_set(tmp_path: Path) -> None:
    for syntax in ("sh", "csh", "fish"):
        r = es.render(syntax, {"GOOD": "1", "my.dotted-name": "2"})
        assert set(r.left_out) == {"my.dotted-name"}
        assert "my.dotted-name" not in r.text


def _dotenv_safe() -> dict[str, str]:
    """The tricky values the dotenv dialect can carry (the others are refused, below)."""
    return {k: v for k, v in TRICKY.items()
            if k not in ("BRACED", "BACKSLASH", "JSONISH")}


def test_dotenv_read_by_python_dotenv(tmp_path: Path) -> None:
    from dotenv import dotenv_values

    env = {**_dotenv_safe(), "WIN_PATH": "C:\\Users\\me", "JSON_NO_APOS": '{"a": 1}',
           "APOS_NEWLINE": "it's\ntwo"}
    path = _written(tmp_path, "dotenv", env, HELD)
    assert dotenv_values(path) == env  # held-back ones commented out
    assert dotenv_values(stream=io.StringIO(path.read_text()), interpolate=False) == env


def test_dotenv_plain_values_are_bare_so_docker_reads_them_too() -> None:
    text = es.render("dotenv", {"URL": TRICKY["PLAIN"], "N": "42", "E": ""}).text
    # docker run --env-file takes everything after the first = verbatim
    assert text == f"E=\nN=42\nURL={TRICKY['PLAIN']}\n"


@pytest.mark.parametrize(("value", "why"), [
    ("${HOME}", "${"), ("a\\$b", "backslash"), ("lit \\n", "backslash"),
    ("both ' and \"", "both kinds of quotes"), ("cr\r", "carriage return"),
    ("sep\u2028x", "line separator")])
def test_dotenv_refuses_values_its_readers_disagree_on(value: str, why: str) -> None:
    with pytest.raises(es.EnvSyntaxError) as e:
        es.render("dotenv", {"OK": "1", "BAD": value})
    assert "BAD" in str(e.value) and why in str(e.value) and "json" in str(e.value)
    assert "OK:" not in str(e.value)


def test_json_is_exact_and_names_what_it_leaves_out(tmp_path: Path) -> None:
    r = es.render("json", TRICKY, HELD)
    assert json.loads(r.text) == TRICKY
    assert set(r.left_out) == set(HELD)


def test_compose_fragment_read_by_docker_compose(tmp_path: Path) -> None:
    """`docker-compose config` (v1, Debian's docker-compose; no daemon needed) merges the
    fragment over a base file and interpolates it; its output is itself a compose file, where
    a literal $ is written $$."""
    expected = {**TRICKY, "odd.name-x": "v"}
    fragment = es.render("compose", expected, HELD, service="hello").text
    doc = yaml.safe_load(fragment)
    assert {k: v.replace("$$", "$") for k, v in
            doc["services"]["hello"]["environment"].items()} == expected
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (scripts/bootstrap installs Debian's); "
                    "checked with a YAML parser only")
    (tmp_path / "base.yaml").write_text(
        'version: "3.8"\nservices:\n  hello:\n    image: busybox\n')
    (tmp_path / "env.yaml").write_text('version: "3.8"\n' + fragment)
    out = subprocess.run(["docker-compose", "-f", "base.yaml", "-f", "env.yaml", "config"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/compose-home"})
    assert out.returncode == 0, out.stderr
    env = yaml.safe_load(out.stdout)["services"]["hello"]["environment"]
    assert {k: v.replace("$$", "$") for k, v in env.items()} == expected
    assert "LD_PRELOAD" not in env  # held back: commented out


def test_powershell_writer(tmp_path: Path) -> None:
    r = es.render("powershell", {"SINGLE": "it's", "odd.name": "{x}", "NL": "a\nb"}, HELD)
    assert "$env:SINGLE = 'it''s'\n" in r.text
    assert "${env:odd.name} = '{x}'\n" in r.text
    assert "$env:NL = 'a\nb'\n" in r.text
    assert "# $env:LD_PRELOAD = '/tmp/evil.so'\n" in r.text
    if shutil.which("pwsh") is None:
        pytest.skip("PowerShell (pwsh) is not in Debian's archive: not read back here")
    got = _run_env(["pwsh", "-NoProfile", "-Command",
                    f". '{_written(tmp_path, 'powershell', TRICKY)}'; "
                    "[Environment]::GetEnvironmentVariables().GetEnumerator() | "
                    "% { $_.Key + '=' + $_.Value + [char]0 } | Write-Host -NoNewline"])
    assert {k: got.get(k) for k in TRICKY if TRICKY[k]} == {
        k: v for k, v in TRICKY.items() if v}  # Windows has no empty variables


def test_cmd_writer_refuses_what_cmd_cannot_hold() -> None:
    r = es.render("cmd", {"PCT": "100%", "AMP": "a&b|c>d", "E": ""}, {"LD_PRELOAD": "x"})
    assert r.text == ('@echo off\r\nset "AMP=a&b|c>d"\r\nset "E="\r\nset "PCT=100%%"\r\n'
                      'REM held back by bridge (uncomment to use; line breaks and control '
                      'characters are shown escaped):\r\nREM set "LD_PRELOAD=x"\r\n')
    for bad, why in (("a\nb", "line break"), ('say "x"', "double quote")):
        with pytest.raises(es.EnvSyntaxError, match=why):
            es.render("cmd", {"V": bad})
    if shutil.which("cmd.exe") is None:
        pytest.skip("cmd.exe is Windows only: the batch file is not run here")


def test_unknown_syntax_is_a_clear_error() -> None:
    with pytest.raises(es.BridgeError, match="unknown env syntax 'yaml'; use one of dotenv"):
        es.render("yaml", {})


# Issue 19, item 4: a held-back value (or name) must not end its comment in any reader.
BREAKS = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029",
          "\x00", "\x1a", "\x1b"]
# Every character any reader of these files ends a line at (a superset of each one's).
ANY_READERS_BREAK = "[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\x00\x1a]"


def _hostile(marker: Path) -> dict[str, str]:
    """Held-back values that, were the comment ended by the break, inject a command (shells),
    a variable (dotenv), a key (compose) or a statement (PowerShell)."""
    held = {}
    for i, brk in enumerate(BREAKS):
        payload = (f"x'\"{brk}touch {marker}{brk}INJECTED_{i}=1{brk}"
                   f"    command: [\"evil\"]{brk}    privileged: true{brk}"
                   f"$env:INJECTED_{i} = 'ps'{brk}set INJECTED_{i}=1{brk}")
        held[f"LD_PRELOAD_{i}"] = payload
    held["PYTHONPATH"] = "\u2028    command: evil"
    return held


def test_every_syntax_keeps_each_held_back_value_on_its_comment_line() -> None:
    """The rule itself, for every syntax (PowerShell and cmd included, whose readers are not in
    Debian): split at every character any reader ends a line at, each piece of the held-back
    section is a comment."""
    held = _hostile(Path("/tmp/m"))
    held["odd\u2028name\x85"] = "v"  # a name too (PowerShell and compose write any name)
    for syntax in es.SYNTAXES:
        if syntax == "json":
            continue
        text = es.render(syntax, {"A": "1"}, held).text
        section = text[text.index("held back by bridge") - (4 if syntax == "cmd" else 2):]
        mark = "REM " if syntax == "cmd" else "# "
        pieces = [p for p in re.split(ANY_READERS_BREAK, section) if p]
        assert pieces and all(p.startswith(mark) for p in pieces), (syntax, pieces)


def test_comment_safe_escapes_every_line_break_visibly() -> None:
    assert es.comment_safe("a\nb\rc\u2028d\x85e\x1bf\tg") == "a\\nb\\rc\\u2028d\\x85e\\x1bf\tg"


@pytest.mark.parametrize(("syntax", "prog"), [
    ("sh", "sh"), ("sh", "bash"), ("fish", "fish"), ("csh", "tcsh"), ("csh", "bsd-csh")])
def test_shells_run_nothing_from_a_held_back_value(tmp_path: Path, syntax: str,
                                                   prog: str) -> None:
    marker = tmp_path / "pwned"
    got = _shell(_written(tmp_path, syntax, {"A": "1"}, _hostile(marker)), prog)
    assert not marker.exists()
    assert got.get("A") == "1"
    assert not [k for k in got if k.startswith(("INJECTED", "LD_PRELOAD", "PYTHONPATH"))]


def test_python_dotenv_reads_no_variable_from_a_held_back_value(tmp_path: Path) -> None:
    from dotenv import dotenv_values

    path = _written(tmp_path, "dotenv", {"A": "1"}, _hostile(tmp_path / "m"))
    assert dotenv_values(path) == {"A": "1"}
    assert dotenv_values(stream=io.StringIO(path.read_text(encoding="utf-8")),
                         interpolate=False) == {"A": "1"}
    text = es.render("sh", {"A": "1"}, _hostile(tmp_path / "m")).text
    (tmp_path / "sh.env").write_text(text, encoding="utf-8", newline="")
    assert dotenv_values(tmp_path / "sh.env") == {"A": "1"}  # comment lines even for it


def test_docker_compose_reads_no_key_from_a_held_back_value(tmp_path: Path) -> None:
    held = _hostile(tmp_path / "m")
    kept = {"A": "1", "SEP": "a\u2028b\x85c\u2029d"}  # and a kept value keeps its characters
    fragment = es.render("compose", kept, held, service="hello").text
    doc = yaml.safe_load(fragment)
    assert doc == {"services": {"hello": {"environment": kept}}}
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed; checked with PyYAML only")
    (tmp_path / "base.yaml").write_text(
        'version: "3.8"\nservices:\n  hello:\n    image: busybox\n')
    (tmp_path / "env.yaml").write_text('version: "3.8"\n' + fragment, encoding="utf-8",
                                       newline="")
    out = subprocess.run(["docker-compose", "-f", "base.yaml", "-f", "env.yaml", "config"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/compose-home"})
    assert out.returncode == 0, out.stderr
    service = yaml.safe_load(out.stdout)["services"]["hello"]
    assert set(service) == {"image", "environment"}  # no command, no privileged
    assert set(service["environment"]) == set(kept) and service["environment"]["A"] == "1"
    # docker-compose read SEP whole (its own `config` output then writes the breaks raw inside
    # a single-quoted scalar, which a YAML reader folds: that is its writer, not this file)
    assert re.search("a\u2028 *b\x85 *c\u2029 *d", out.stdout)
