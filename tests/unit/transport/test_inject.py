"""torsocks runs the command as given (bridge.transport.outbound.inject), checked against the
real torsocks script: its first word is never taken for one of torsocks' own subcommands
(`on`, `off`, `show`, `sh`) or options, and the exit code is the command's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.errors import BridgeError
from bridge.transport.outbound import Mode, Outbound, inject

TORSOCKS = shutil.which("torsocks")
needs_torsocks = pytest.mark.skipif(TORSOCKS is None, reason="needs torsocks")

# Prints what torsocks gave it and its arguments, one a line, and exits with the code asked.
REPORT = '''#!/bin/sh
echo "preload=$LD_PRELOAD"
for a in "$@"; do echo "arg=$a"; done
exit "${CODE:-0}"
'''


def _outbound(tmp_path: Path) -> Outbound:
    assert TORSOCKS is not None
    ob = Outbound(mode=Mode.INJECT, user="u", password="p", port=9, torsocks=TORSOCKS,
                  conf_file=str(tmp_path / "torsocks.conf"))
    inject.write_config(ob.conf_file or "", inject.config_text("127.0.0.1", 9, "u", "p"))
    return ob


def _bin(tmp_path: Path, *names: str) -> str:
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name in names:
        f = d / name
        f.write_text(REPORT)
        f.chmod(0o755)
    return f"{d}:/usr/bin:/bin"


def _run(ob: Outbound, argv: list[str], path: str, **extra: str) -> tuple[int, str]:
    env = {"PATH": path, **ob.env(), **extra}
    done = subprocess.run(ob.wrap_argv(argv, path), env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


@needs_torsocks
def test_sh_c_runs_under_torsocks_with_its_exit_code(tmp_path: Path) -> None:
    ob = _outbound(tmp_path)
    code, out = _run(ob, ["sh", "-c", 'echo "ran $LD_PRELOAD"; exit 7'], "/usr/bin:/bin")
    assert code == 7, out
    assert out.startswith("ran ") and "libtorsocks" in out, out
    # (what torsocks did with it before: its `sh` subcommand printed LD_PRELOAD="" and exit 0)
    assert 'LD_PRELOAD=""' not in out


@needs_torsocks
@pytest.mark.parametrize("name", ["show", "on", "off", "sh", "-d", "--shell", "-h"])
def test_a_command_named_like_a_torsocks_word_runs_with_its_arguments(
        tmp_path: Path, name: str) -> None:
    ob = _outbound(tmp_path)
    path = _bin(tmp_path, name)
    code, out = _run(ob, [name, "-q", "--", "-u", "x y"], path, CODE="5")
    assert code == 5, out
    lines = out.splitlines()
    assert lines[0].startswith("preload=") and "libtorsocks" in lines[0], out
    assert lines[1:] == ["arg=-q", "arg=--", "arg=-u", "arg=x y"], out


@needs_torsocks
def test_a_path_is_kept_and_one_starting_with_a_dash_made_relative(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ob = _outbound(tmp_path)
    _bin(tmp_path, "-odd")
    monkeypatch.chdir(tmp_path)
    code, out = _run(ob, ["bin/-odd", "-x"], "/usr/bin:/bin", CODE="3")
    assert (code, out.splitlines()[1:]) == (3, ["arg=-x"]), out
    assert ob.wrap_argv(["bin/-odd"])[1] == "bin/-odd"
    os.rename(tmp_path / "bin", tmp_path / "-dir")
    assert ob.wrap_argv(["-dir/-odd"])[1] == "./-dir/-odd"
    code, out = _run(ob, ["-dir/-odd"], "/usr/bin:/bin", CODE="4")
    assert code == 4 and "libtorsocks" in out, out


def test_the_argv_for_torsocks_names_the_command_by_its_path(tmp_path: Path) -> None:
    path = _bin(tmp_path, "show")
    assert inject.torsocks_argv("/t", ["show", "-a"], path) == [
        "/t", str(tmp_path / "bin" / "show"), "-a"]
    with pytest.raises(BridgeError, match="no-such-program: command not found"):
        inject.torsocks_argv("/t", ["no-such-program"], path)
    # proxy and none run the command itself
    ob = Outbound(mode=Mode.PROXY, user="u", password="p")
    assert ob.wrap_argv(["sh", "-c", "exit 7"]) == ["sh", "-c", "exit 7"]
