"""bridge.local.env: the overlay rule, and env files that survive a round trip (ours and bash's)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from bridge.errors import BridgeError
from bridge.local.env import (
    LOCAL_KEEP,
    format_dotenv,
    is_local,
    overlay,
    parse_dotenv,
    write_dotenv,
    write_json,
)

TYPICAL = {
    "PLAIN": "hello",
    "EMPTY": "",
    "SPACES": "  two  spaces  ",
    "PEM": "-----BEGIN KEY-----\nMIIB\nabc==\n-----END KEY-----\n",
    "JSON": '{"user": "app", "pass": "p@ss\'w\\"rd"}',
    "DOLLAR": "$HOME and ${PATH} and $(echo no) and `echo no`",
    "BACKSLASH": "C:\\path\\to\\file \\n not a newline \\",
    "SINGLE": "it's 'quoted'",
    "HASH": "value # not a comment",
    "UNICODE": "héllo wörld ✓",
    "TRAILING_NL": "line\n\n",
    "EQUALS": "a=b=c",
    "TAB": "a\tb",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
}


def test_overlay_pod_wins_except_local_session_variables() -> None:
    local = {"HOME": "/home/dev", "PATH": "/usr/bin", "LC_ALL": "C.UTF-8", "EDITOR_X": "l",
             "DATABASE_URL": "local", "XDG_RUNTIME_DIR": "/run/user/1000", "ONLY_LOCAL": "1"}
    pod = {"HOME": "/root", "PATH": "/app/bin", "LC_ALL": "POSIX", "DATABASE_URL": "pod",
           "HOSTNAME": "hello-bridge-abc", "TMPDIR": "/data/tmp", "EDITOR_X": "p",
           "KUBERNETES_SERVICE_HOST": "10.96.0.1", "HELLO_SERVICE_PORT": "80",
           "XDG_CONFIG_HOME": "/etc/app"}
    env = overlay(local, pod)
    assert env == {
        "HOME": "/home/dev",
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "XDG_RUNTIME_DIR": "/run/user/1000",
        "ONLY_LOCAL": "1",
        "DATABASE_URL": "pod",
        "EDITOR_X": "p",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "HELLO_SERVICE_PORT": "80",
    }
    # the inputs are not modified
    assert local["DATABASE_URL"] == "local" and pod["HOME"] == "/root"


def test_local_keep_covers_the_laptop_session() -> None:
    for name in ("HOME", "PATH", "HOSTNAME", "USER", "LOGNAME", "SHELL", "TERM", "PWD",
                 "LANG", "TMPDIR", "DISPLAY", "XAUTHORITY", "SSH_AUTH_SOCK"):
        assert name in LOCAL_KEEP
    assert is_local("LC_CTYPE") and is_local("XDG_DATA_HOME")
    assert not is_local("KUBERNETES_PORT") and not is_local("HOMEPAGE")


def test_dotenv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    assert write_dotenv(path, TYPICAL) == []
    assert parse_dotenv(path.read_text(encoding="utf-8")) == TYPICAL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_dotenv_bash_source_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    write_dotenv(path, TYPICAL)
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    script = f'set -a; . "$1"; set +a; exec python3 -c "{dump}"'
    out = subprocess.run(["bash", "-c", script, "bash", str(path)], capture_output=True,
                         check=True, env={"PATH": os.environ["PATH"]}, timeout=30)
    assert out.stderr == b""
    sourced = json.loads(out.stdout)
    for name, value in TYPICAL.items():
        assert sourced[name] == value, name


def test_dotenv_leaves_out_names_a_shell_cannot_assign(tmp_path: Path) -> None:
    env = {"GOOD": "1", "my.dotted": "2", "1BAD": "3", "with-dash": "4"}
    path = tmp_path / "e.env"
    assert sorted(write_dotenv(path, env)) == ["1BAD", "my.dotted", "with-dash"]
    assert parse_dotenv(path.read_text()) == {"GOOD": "1"}


def test_dotenv_is_sorted_and_one_assignment_per_variable() -> None:
    text, skipped = format_dotenv({"B": "2", "A": "x'y"})
    assert skipped == []
    assert text == "A='x'\\''y'\nB='2'\n"


def test_parse_dotenv_accepts_comments_export_and_bare_words() -> None:
    text = "# comment\n\nexport A='1'\nB=bare  # trailing comment\n  C='multi\nline'\nD=\n"
    assert parse_dotenv(text) == {"A": "1", "B": "bare", "C": "multi\nline", "D": ""}


@pytest.mark.parametrize(
    "text",
    ["NOEQUALS\n", "A='unterminated\n", "A='x' extra\n", 'A="double"\n', "9X='1'\n", "A=$X\n"],
)
def test_parse_dotenv_rejects_what_it_cannot_read_exactly(text: str) -> None:
    with pytest.raises(BridgeError, match="env file line"):
        parse_dotenv(text)


def test_write_json(tmp_path: Path) -> None:
    path = tmp_path / "env.json"
    path.write_text("old")
    path.chmod(0o644)
    write_json(path, TYPICAL)
    assert json.loads(path.read_text(encoding="utf-8")) == TYPICAL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["env.json"]  # no temporary left


def test_write_to_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BridgeError, match="cannot write"):
        write_dotenv(tmp_path / "nope" / "x.env", {"A": "1"})
