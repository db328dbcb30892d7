"""The command's environment and the env files (bridge/local/envout.py): output paths checked
before anything, the pod's risky variables held back, bridge's own added, the session named."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import anyio
import pytest

from bridge.cleanup import CleanupStack
from bridge.progress import Progress


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
