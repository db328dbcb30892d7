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
    assert re.search(task["problemMatcher"]["background"]["beginsPattern"], line)
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
