"""The real cluster's start and stop: it refuses in one line when a tool is missing, a start
cleans what a killed run left, and a stop leaves no process, container, mount, netns,
interface, iptables chain (KUBE-*, CNI-*), cgroup, host setting or state behind.

These start their own clusters, so they run on their own (`make test` runs this file in a
separate pytest after the suites that share the session's cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.equipment.realcluster import cleanup, fixture
from tests.equipment.realcluster.config import Config

pytestmark = [pytest.mark.cluster]
SCRIPT = fixture.REPO / "scripts" / "real-cluster"


@pytest.fixture(autouse=True)
def real_only() -> None:
    if fixture.selected() != "real":
        pytest.skip("the real cluster's tests run with BRIDGE_TEST_CLUSTER=real (make test)")
    if os.geteuid() != 0:
        pytest.skip("the real cluster needs root")


def test_refuses_in_one_line_when_a_tool_is_missing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with python and nothing else
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    result = subprocess.run([sys.executable, str(SCRIPT), "--kubeconfig",
                             str(tmp_path / "kc")], capture_output=True, text=True,
                            env={**os.environ, "PATH": str(bin_dir)}, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "missing Debian packages: " in lines[0] and "containerd" in lines[0]
    assert lines[0].endswith("nothing was started")
    assert not (tmp_path / "kc").exists()


def _sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text() for k in cleanup.SYSCTLS
            if Path("/proc/sys", k).exists()}


def test_a_start_cleans_a_killed_run_and_a_stop_leaves_nothing(tmp_path: Path) -> None:
    config = Config()
    before = _sysctls()
    first = fixture.start(tmp_path / "kc1")
    assert first.process is not None
    assert (tmp_path / "kc1").exists()
    kc = yaml.safe_load((tmp_path / "kc1").read_text())
    assert kc["current-context"] == "bridge-test"
    # kill -9: nothing of the run is cleaned up, so there is something to find
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    left = cleanup.leftovers(config)
    assert any(x.startswith("process ") for x in left), left
    assert any("chain KUBE-" in x for x in left), left
    assert any(x.startswith("mount ") for x in left), left
    # the next start cleans that up and comes up
    second = fixture.start(tmp_path / "kc2")
    assert second.process is not None
    assert second.stop() == 0
    assert cleanup.leftovers(config) == []
    assert _sysctls() == before
    assert "real cluster stopped" in "\n".join(second.output)
