"""The request (bridge/swap/request.py): everything that needs no cluster is checked before the
session starts, each error one line saying nothing was changed; the request is frozen."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bridge.errors import NothingChanged
from bridge.progress import Progress
from bridge.swap.options import SwapOptions
from bridge.swap.request import SwapRequest, build, command_problem


def refused(**o: object) -> str:
    with pytest.raises(NothingChanged) as e:
        build(SwapOptions(**{"target": "hello", "outbound": "none", **o}))  # type: ignore[arg-type]
    text = str(e.value)
    assert "\n" not in text and text.endswith("; nothing was changed"), text
    assert text.count("nothing was changed") == 1, text
    return text


def test_a_command_that_is_not_on_path_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21.3: `-- pyhton app.py` created the proxy before torsocks said it was not found."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert refused(command=("pyhton", "app.py")) == \
        "the command 'pyhton' was not found on PATH; nothing was changed"
    tool = tmp_path / "pyhton"
    tool.write_text("#!/bin/sh\n")
    assert "not found" in refused(command=("pyhton", "app.py"))  # not executable: not found
    tool.chmod(0o755)
    assert build(SwapOptions("hello", command=("pyhton", "app.py"), outbound="none")).command \
        == ("pyhton", "app.py")


def test_a_command_given_as_a_path_must_be_an_executable_file(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    assert command_problem([str(script)], "") == f"the command {script} does not exist"
    script.write_text("#!/bin/sh\n")
    assert command_problem([str(script)], "") == f"the command {script} is not executable"
    script.chmod(0o755)
    assert command_problem([str(script)], "") is None
    assert command_problem([str(tmp_path)], "") == f"the command {tmp_path} is a directory"
    assert command_problem([""], "/usr/bin") == "the command is an empty string"


def test_the_options_syntax_is_checked_before_anything(tmp_path: Path) -> None:
    assert refused(ports=("80:x",)).startswith("invalid --port '80:x'")
    assert refused(ports=("0",)).startswith("invalid --port '0'")
    assert refused(target="pod/x").startswith("invalid target 'pod/x'")
    assert refused(env_syntax="yaml").startswith("--env-syntax 'yaml'")
    assert refused(mount_mode="rsync").startswith("--mount-mode 'rsync'")
    assert refused(outbound="vpn").startswith("--outbound 'vpn'")
    assert refused(timeout=0.0).startswith("--timeout 0")
    assert refused(forwards=("orders",)).startswith("--forward")
    bad = tmp_path / "missing" / "x.env"
    assert refused(env_file=str(bad)) == \
        f"--env-file {bad}: directory {bad.parent} does not exist; nothing was changed"


def test_the_request_is_frozen_and_says_its_end() -> None:
    req = build(SwapOptions("hello", outbound="none"))
    assert isinstance(req, SwapRequest) and req.attach and not req.direct_tcpip
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.command = ("sh",)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.options.timeout = 1  # type: ignore[misc]
    assert not build(SwapOptions("hello", command=("true",), outbound="none")).attach


def test_a_bad_request_fails_before_the_cluster_is_contacted(tmp_path: Path) -> None:
    """The CLI builds the request first: no kubeconfig is even read (there is none here), and
    the error is the request's own line."""
    kubeconfig = tmp_path / "no-such-kubeconfig"
    r = subprocess.run([sys.executable, "-m", "bridge.cli", "--kubeconfig", str(kubeconfig),
                        "swap", "hello", "--outbound", "none", "--", "pyhton", "app.py"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode != 0
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("bridge")]
    assert said == ["bridge: error: the command 'pyhton' was not found on PATH; nothing was "
                    "changed"], r.stderr


def test_a_session_takes_the_request_and_its_hints_come_first() -> None:
    """Session(request): what the request found (e.g. no torsocks) is said before the API is
    contacted; an unreadable kubeconfig then ends the session with nothing changed."""
    from bridge.swap.session import Session

    req = dataclasses.replace(build(SwapOptions("hello", outbound="none",
                                                kubeconfig=os.devnull + "/x")),
                              hints=("no torsocks here",))
    out = io.StringIO()
    with pytest.raises(Exception) as e:
        anyio.run(Session(req, Progress(stream=out)).run)
    assert "no torsocks here" in out.getvalue()
    assert "nothing was changed" in str(e.value)
