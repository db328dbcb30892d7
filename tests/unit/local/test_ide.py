"""bridge/ide: attach mode's env file place, the attached line, JSONC, `bridge ide vscode`."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.errors import BridgeError
from bridge.local import env
from bridge.local.ide import envfile, jsonc, vscode
from bridge.progress import Progress

OPTS = vscode.Options(target="svc/hello", name="hello", program="app.py")

USER_LAUNCH = """// My launch configurations
{
    // keep this comment
    "version": "0.2.0",
    "configurations": [
        /* the one I use every day */
        {
            "name": "Python: Current File",
            "type": "debugpy",
            "request": "launch",
            "program": "${file}", // trailing comma next
        },
    ],
    "compounds": [] /* end */
}
"""


# -- env file place and the attached line ----------------------------------------------------


def test_default_env_file_is_stable_per_deployment_and_syntax(tmp_path: Path) -> None:
    assert envfile.default_env_file(tmp_path, "hello") == tmp_path / ".bridge" / "hello.env"
    assert envfile.default_env_file(tmp_path, "hello", "powershell") == \
        tmp_path / ".bridge" / "hello.ps1"
    for bad in ("../etc", "a/b", "", "UPPER"):
        with pytest.raises(BridgeError, match="give --env-file"):
            envfile.default_env_file(tmp_path, bad)


def test_bridge_dir_is_private_and_git_ignored(tmp_path: Path) -> None:
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    d = tmp_path / ".bridge"
    envfile.prepare_dir(d)
    env.write_private(d / "hello.env", "A=1\n")
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert oct((d / "hello.env").stat().st_mode & 0o777) == "0o600"
    status = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain",
                             "--untracked-files=all"], capture_output=True, text=True, check=True)
    assert status.stdout == ""  # nothing of .bridge/ shows up for git
    envfile.prepare_dir(d)  # again: fine, the user's edits to .gitignore are kept
    assert (d / ".gitignore").read_text() == envfile.GITIGNORE


def test_the_task_readiness_pattern_matches_the_attached_line_bridge_prints() -> None:
    out = io.StringIO()
    Progress(stream=out).info(envfile.attached_message(["127.0.0.1:8080"], "/w/.bridge/h.env"))
    line = out.getvalue().splitlines()[0]
    task = vscode.swap_task(OPTS)
    assert re.search(task["problemMatcher"]["background"]["endsPattern"], line)
    # (not the begin pattern: VS Code tries that first on every line, see below)
    assert not re.search(task["problemMatcher"]["background"]["beginsPattern"], line)
    # and only that line: the earlier progress lines do not end the wait
    for earlier in ("bridge: waiting for proxy pod x to become Ready",
                    "bridge: wrote the pod's environment to /w/.bridge/h.env",
                    "bridge: error: attached: nothing"):
        assert not re.search(task["problemMatcher"]["background"]["endsPattern"], earlier)


# -- JSONC -----------------------------------------------------------------------------------


def test_jsonc_reads_comments_and_trailing_commas() -> None:
    assert jsonc.loads(USER_LAUNCH) == {
        "version": "0.2.0", "compounds": [],
        "configurations": [{"name": "Python: Current File", "type": "debugpy",
                            "request": "launch", "program": "${file}"}]}
    assert jsonc.loads('{"a": "// not a comment", "b": "/* nor */", "c": [1, 2.5e3, null]}') \
        == {"a": "// not a comment", "b": "/* nor */", "c": [1, 2500.0, None]}


@pytest.mark.parametrize("bad", ['{"a": 1', '{"a" 1}', "{'a': 1}", '{"a": 1} x', "/* x",
                                 '{"a": tru}'])
def test_jsonc_rejects_what_is_not_jsonc(bad: str) -> None:
    with pytest.raises(jsonc.JsoncError, match="line 1"):
        jsonc.loads(bad)


def test_merge_keeps_the_users_configurations_and_comments() -> None:
    merged = vscode.merged_launch(USER_LAUNCH, OPTS)
    for kept in ("// My launch configurations", "// keep this comment",
                 "/* the one I use every day */", "// trailing comma next", "/* end */"):
        assert kept in merged
    data = jsonc.loads(merged)
    assert [c["name"] for c in data["configurations"]] == ["Python: Current File",
                                                           "bridge: debug hello"]
    assert data["configurations"][0] == jsonc.loads(USER_LAUNCH)["configurations"][0]
    assert data["configurations"][1] == vscode.launch_config(OPTS)
    assert data["compounds"] == []
    # everything before our insertion is the user's text, byte for byte
    head = USER_LAUNCH[:USER_LAUNCH.index("    ],")]
    assert merged.startswith(head)


def test_merge_again_replaces_ours_and_duplicates_nothing() -> None:
    once = vscode.merged_launch(USER_LAUNCH, OPTS)
    other = vscode.Options(target="hello", name="hello", module="app.main")
    twice = vscode.merged_launch(once, other)
    data = jsonc.loads(twice)
    assert [c["name"] for c in data["configurations"]] == ["Python: Current File",
                                                           "bridge: debug hello"]
    assert data["configurations"][1]["module"] == "app.main"
    assert vscode.merged_launch(twice, other) == twice


def test_tasks_merge_adds_tasks_and_inputs_to_a_file_without_them() -> None:
    user = '{\n\t"version": "2.0.0", // tabs here\n\t"tasks": [{"label": "build"}]\n}\n'
    merged = vscode.merged_tasks(user, OPTS)
    data = jsonc.loads(merged)
    assert [t["label"] for t in data["tasks"]] == ["build", "bridge: swap hello",
                                                   "bridge: end swap hello"]
    assert data["inputs"] == [vscode.terminate_input(OPTS)]
    assert "// tabs here" in merged
    # the end task terminates exactly the swap task, through the input
    end = data["tasks"][2]
    input_id = re.fullmatch(r"echo \$\{input:(.+)\}", end["command"])
    assert input_id and data["inputs"][0]["id"] == input_id.group(1)
    assert data["inputs"][0]["args"] == data["tasks"][1]["label"]


def test_new_files_are_plain_json() -> None:
    assert json.loads(vscode.merged_tasks("", OPTS))["version"] == "2.0.0"
    assert json.loads(vscode.merged_launch("", OPTS))["version"] == "0.2.0"


def test_launch_config_uses_the_env_file_the_task_writes() -> None:
    task, launch = vscode.swap_task(OPTS), vscode.launch_config(OPTS)
    assert launch["envFile"] == task["args"][task["args"].index("--env-file") + 1]
    assert launch["preLaunchTask"] == task["label"]
    assert launch["postDebugTask"] == vscode.end_task(OPTS)["label"]
    assert launch["type"] == "debugpy" and launch["program"] == "${workspaceFolder}/app.py"
    assert task["isBackground"] is True


def test_cli_writes_both_files_and_keeps_a_broken_one_untouched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["-n", "dev", "ide", "vscode", "svc/hello", "--module", "app",
              "--workspace", str(tmp_path)])
    assert e.value.code == 0
    tasks = jsonc.loads((tmp_path / ".vscode" / "tasks.json").read_text())
    assert tasks["tasks"][0]["args"][-2:] == ["--namespace", "dev"]
    assert (tmp_path / ".bridge" / ".gitignore").exists()
    broken = '{"version": "0.2.0", "configurations": [ // oops\n'
    (tmp_path / ".vscode" / "launch.json").write_text(broken)
    before = (tmp_path / ".vscode" / "tasks.json").read_text()
    with pytest.raises(SystemExit) as e:
        main(["ide", "vscode", "other", "--workspace", str(tmp_path)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "launch.json is not valid JSON with comments" in err and "nothing was written" in err
    assert (tmp_path / ".vscode" / "launch.json").read_text() == broken
    assert (tmp_path / ".vscode" / "tasks.json").read_text() == before


# -- the task as VS Code runs it ---------------------------------------------------------------
def _vscode_busy_after_each_line(background: dict[str, object], lines: list[str]) -> list[bool]:
    """VS Code's WatchingProblemCollector (src/vs/workbench/contrib/tasks/common/
    problemCollectors.ts), reduced to its background state: `activeOnStart` makes it busy at
    the start (aboutToStart); each line is tried as a begin (ignored while busy) and, when it
    was not one, as an end (ignored while idle): `tryBegin(line) || tryFinish(line)`. A
    pre-launch task lets the debugger start at its first busy -> idle change. Keys it does not
    know (`activeBegin`) are ignored, as VS Code's parser ignores them."""
    begins = re.compile(str(background["beginsPattern"]))
    ends = re.compile(str(background["endsPattern"]))
    busy = background.get("activeOnStart") is True
    out = []
    for line in lines:
        began = False
        if begins.search(line) and not busy:
            busy = began = True
        if not began and ends.search(line) and busy:
            busy = False
        out.append(busy)
    return out


def test_the_background_task_is_busy_from_its_start_until_attached_and_stays_idle() -> None:
    out = io.StringIO()
    progress = Progress(stream=out)
    progress.info("swapping deployment/hello (container app, ports 80) in namespace dev, "
                  "session ab12cd34")
    progress.info("created proxy deployment/hello-bridge-ab12cd34")
    progress.info(envfile.attached_message(["127.0.0.1:8080"], "/w/.bridge/hello.env"))
    progress.info("reconnected to the proxy pod (after 1.2s)")
    progress.warn("the tunnel dropped; reconnecting")
    lines = out.getvalue().splitlines()
    background = vscode.swap_task(OPTS)["problemMatcher"]["background"]
    assert set(background) == {"activeOnStart", "beginsPattern", "endsPattern"}
    assert _vscode_busy_after_each_line(background, lines) == [True, True, False, False, False]
    assert _vscode_busy_after_each_line(background, []) == []  # busy before any line: the start
    # what the old matcher did: `activeBegin` is no key of VS Code's, so the task was idle at
    # its start, and every later "bridge: " line made it busy again
    old = {"activeBegin": True, "beginsPattern": r"^bridge: ",
           "endsPattern": envfile.ATTACHED_LINE_PATTERN}
    assert _vscode_busy_after_each_line(old, lines) == [True, True, False, True, True]


def test_the_task_runs_the_bridge_that_wrote_it_by_its_absolute_path(tmp_path: Path) -> None:
    script = tmp_path / "venv" / "bin" / "bridge"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert vscode.running_bridge(str(script), "/usr/bin/python3") == (str(script),)
    # started as `python -m bridge.cli`, or from a test runner: this interpreter, -m bridge.cli
    assert vscode.running_bridge("/src/bridge/cli.py", "/v/bin/python") == (
        "/v/bin/python", "-m", "bridge.cli")
    assert vscode.running_bridge("/usr/bin/pytest", "/v/bin/python")[1:] == ("-m", "bridge.cli")
    task = vscode.swap_task(vscode.Options("hello", "hello", bridge=("/v/bin/python", "-m",
                                                                      "bridge.cli")))
    assert task["command"] == "/v/bin/python"
    assert task["args"][:4] == ["-m", "bridge.cli", "swap", "hello"]


def test_the_installed_command_writes_its_own_path_and_it_runs_without_path(
        tmp_path: Path) -> None:
    """The console script (as pip, pipx or a venv install it) writes its own absolute path,
    which VS Code can run with a PATH that has no bridge on it."""
    import subprocess
    import sys

    entry = Path(sys.executable).parent / "bridge"
    if not entry.exists():
        pytest.skip("bridge's console script is not installed next to this interpreter")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run([str(entry), "ide", "vscode", "hello", "--workspace", str(tmp_path)],
                   env=env, check=True, capture_output=True, timeout=120)
    task = jsonc.loads((tmp_path / ".vscode" / "tasks.json").read_text())["tasks"][0]
    assert task["command"] == str(entry)
    done = subprocess.run([task["command"], "--help"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and "swap" in done.stdout
