"""The attach hint's command form for each env syntax (bridge.local.envout.scoped_run), run
with the syntax's real reader: the command sees every variable of the file, exactly, and the
shell the hint was typed in keeps none of them afterwards (LD_PRELOAD, the proxy variables)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bridge.cleanup import CleanupStack
from bridge.local import envout, envsyntax
from bridge.progress import Progress

# What outbound puts in an attach env file, and a value with every quoting hazard a shell has.
SESSION_VARS = {"LD_PRELOAD": "/nonexistent/bridge-test/libtorsocks.so",
                "ALL_PROXY": "socks5h://bridge-1:pw@127.0.0.1:9",
                "HTTP_PROXY": "http://bridge-1:pw@127.0.0.1:9"}
ODD = {"ODD": "it's \"q\" $HOME `uname` a;b|c \\back !x"}

PROBE = f"""#!{sys.executable}
import json, os
print("saw=" + json.dumps({{k: os.environ.get(k) for k in {sorted({*SESSION_VARS, *ODD})!r}}}))
raise SystemExit(7)
"""

# After the hint, in the same shell: its exit status, and whether any variable stayed.
SH_AFTER = ('echo "status=$?"\n'
            'echo "after=${LD_PRELOAD-unset}:${ALL_PROXY-unset}:${HTTP_PROXY-unset}"\n')
FISH_AFTER = ('echo "status=$status"\n'
              "if set -q LD_PRELOAD; or set -q ALL_PROXY; or set -q HTTP_PROXY\n"
              "  echo after=set\nelse\n  echo after=unset:unset:unset\nend\n")
CSH_AFTER = ('echo "status=$status"\n'
             "if ($?LD_PRELOAD || $?ALL_PROXY || $?HTTP_PROXY) then\n  echo after=set\n"
             "else\n  echo after=unset:unset:unset\nendif\n")

CASES = [  # (syntax, the shell the hint is typed in, what it runs after)
    ("sh", ["dash"], SH_AFTER),
    ("sh", ["bash", "--norc"], SH_AFTER),
    ("dotenv", ["bash", "--norc"], SH_AFTER),
    ("json", ["bash", "--norc"], SH_AFTER),
    ("fish", ["fish", "--no-config"], FISH_AFTER),
    ("csh", ["csh", "-f"], CSH_AFTER),
    ("csh", ["tcsh", "-f"], CSH_AFTER),
]


def _run_hint(tmp_path: Path, syntax: str, shell: list[str], after: str,
              env: dict[str, str]) -> tuple[dict[str, str | None], str, str]:
    rendered = envsyntax.render(syntax, env)
    env_file = Path(".bridge") / f"hello{'.' + syntax if syntax != 'dotenv' else '.env'}"
    (tmp_path / ".bridge").mkdir(exist_ok=True)
    (tmp_path / env_file).write_text(rendered.text)
    probe = tmp_path / "probe"
    probe.write_text(PROBE)
    probe.chmod(0o755)
    hint = envout.scoped_run(syntax, str(env_file))
    assert envout.COMMAND in hint
    script = tmp_path / "typed"
    script.write_text(hint.replace(envout.COMMAND, str(probe)) + "\n" + after)
    # the user's shell: none of the variables before (a clean environment)
    clean = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([*shell, str(script)], cwd=tmp_path, env=clean, capture_output=True,
                          text=True, timeout=60, check=False)
    lines = done.stdout.splitlines()
    saw = next((json.loads(ln[4:]) for ln in lines if ln.startswith("saw=")), {})
    status = next((ln for ln in lines if ln.startswith("status=")), "")
    left = next((ln for ln in lines if ln.startswith("after=")), "")
    assert saw, done.stdout + done.stderr
    return saw, status, left


@pytest.mark.parametrize(("syntax", "shell", "after"), CASES,
                         ids=[f"{c[0]}-{c[1][0]}" for c in CASES])
def test_the_command_sees_the_variables_and_the_shell_keeps_none(
        tmp_path: Path, syntax: str, shell: list[str], after: str) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"needs {shell[0]}")
    if syntax == "dotenv" and shutil.which("dotenv", path=str(Path(sys.executable).parent)) \
            is None:
        pytest.skip("needs python-dotenv's CLI")
    # dotenv cannot carry the odd value (bridge refuses to write it): the session's own only
    env = dict(SESSION_VARS) if syntax == "dotenv" else {**SESSION_VARS, **ODD}
    saw, status, left = _run_hint(tmp_path, syntax, shell, after, env)
    assert saw == {k: env.get(k) for k in saw}
    assert status == "status=7"  # the command's own exit status
    assert left == "after=unset:unset:unset"


def test_forms_the_shells_here_cannot_run_are_scoped_by_a_child_process() -> None:
    """PowerShell and cmd are not on this machine: their forms start a child interpreter
    (whose environment dies with it) and hand back the command's exit code."""
    assert envout.scoped_run("powershell", ".bridge/hello.ps1") == (
        "pwsh -NoProfile -Command '. ''.bridge/hello.ps1''; YOUR_COMMAND; "
        "exit $LASTEXITCODE'")
    assert envout.scoped_run("powershell", "it's.ps1").startswith(
        "pwsh -NoProfile -Command '. ''./it''''s.ps1''; ")
    assert envout.scoped_run("cmd", "hello.cmd") == 'cmd /c "call "hello.cmd" && YOUR_COMMAND"'
    assert envout.scoped_run("compose", "hello.compose.yaml") == (
        "docker compose -f compose.yaml -f hello.compose.yaml up")


def test_a_file_name_without_a_directory_is_not_looked_up_on_path(tmp_path: Path) -> None:
    """`. hello.sh` searches PATH: the form names ./hello.sh."""
    assert envout.scoped_run("sh", "hello.sh") == "(. ./hello.sh && exec YOUR_COMMAND)"
    assert envout.scoped_run("sh", "my env.sh") == "(. './my env.sh' && exec YOUR_COMMAND)"
    assert os.path.basename(envout.COMMAND) == envout.COMMAND


def test_a_dotenv_file_is_not_sourced_by_a_shell(tmp_path: Path) -> None:
    """dotenv writes `X=a;id>pwned` bare (VS Code and python-dotenv read it as is); a shell
    sourcing it would run `id`. The dotenv form reads it with python-dotenv instead."""
    if shutil.which("dotenv", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("needs python-dotenv's CLI")
    value = "a;id>pwned"
    text = envsyntax.render("dotenv", {"X": value}).text
    assert text == f"X={value}\n"
    (tmp_path / "hello.env").write_text(text)
    clean = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    hint = envout.scoped_run("dotenv", "hello.env").replace(envout.COMMAND, "printenv X")
    out = subprocess.run(["bash", "--norc", "-c", hint], cwd=tmp_path, env=clean,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out == value + "\n" and not (tmp_path / "pwned").exists()
    # what the old hint did with it
    subprocess.run(["bash", "--norc", "-c", "set -a; . ./hello.env; set +a"], cwd=tmp_path,
                   env=clean, capture_output=True, timeout=60, check=False)
    assert (tmp_path / "pwned").exists()


# -- moved here from the old test_session.py

def test_output_paths_are_checked_before_anything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bridge.local.envout import output_path_problem

    assert output_path_problem("--env-file", str(tmp_path / "x.env")) is None
    assert output_path_problem("--env-file", "relative.env") is None  # the current directory
    missing = tmp_path / "nope" / "x.env"
    assert output_path_problem("--env-file", str(missing)) == \
        f"--env-file {missing}: directory {missing.parent} does not exist"
    assert output_path_problem("--env-json", str(tmp_path)) == \
        f"--env-json {tmp_path} is a directory"


def test_the_command_environment_names_the_session() -> None:
    from bridge.local.envout import SESSION_VAR, child_environment

    env = child_environment({"GREETING": "hi", "PATH": "/pod/bin"}, "abcd")
    assert env["GREETING"] == "hi" and env[SESSION_VAR] == "abcd"


def test_env_files_hold_back_the_pods_risky_variables_and_add_bridges_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.local import envout

    monkeypatch.chdir(tmp_path)
    pod = {"DB_URL": "postgres://db", "LD_PRELOAD": "/tmp/evil.so", "BASH_ENV": "$(touch x)"}
    own = {"BRIDGE_ROOT": "/tmp/files", "LD_PRELOAD": "/usr/lib/libtorsocks.so"}
    out = io.StringIO()
    progress = Progress(stream=out)
    stack = CleanupStack(progress)
    env_file = envout.write_files(pod, own=own, env_file=None, env_json=str(tmp_path / "e.json"),
                                  attach=True, stem="hello", stack=stack, progress=progress)
    assert env_file == str(tmp_path / ".bridge" / "hello.env")
    lines = Path(env_file).read_text().splitlines()
    assert "DB_URL=postgres://db" in lines and "BRIDGE_ROOT=/tmp/files" in lines
    assert "LD_PRELOAD=/usr/lib/libtorsocks.so" in lines  # bridge's own, after the filter
    assert not any(ln.startswith("BASH_ENV") for ln in lines)
    assert any(ln.startswith("#") and "BASH_ENV" in ln for ln in lines)  # commented out
    assert oct(os.stat(env_file).st_mode & 0o777) == "0o600"
    assert json.loads((tmp_path / "e.json").read_text())["LD_PRELOAD"] == own["LD_PRELOAD"]
    assert out.getvalue().count("held back from the pod's environment") == 1

    child = envout.child_environment(pod, "abcd", allow=("BASH_ENV",), own={"BRIDGE_ROOT": "/r"})
    assert child["BASH_ENV"] == "$(touch x)" and child["BRIDGE_ROOT"] == "/r"
    assert child.get("LD_PRELOAD") != "/tmp/evil.so"
    anyio.run(stack.unwind)
    assert not Path(env_file).exists()  # removed at the end
