"""Start `scripts/test-cluster` for a test session, for the `cluster` fixtures of tests/ and
tests/e2e (BRIDGE_TEST_CLUSTER=local) and the test-cluster checks that start their own
(`cluster_factory`). The real cluster's counterpart is tests/equipment/realcluster/fixture.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import stop_process

REPO = Path(__file__).resolve().parents[3]
READY_TIMEOUT = 60.0
READY_LINE = "test cluster ready"  # what scripts/test-cluster prints once it serves
STOP_TIMEOUT = 30.0


@dataclass
class ClusterProcess:
    kubeconfig: str
    index: int
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)  # every line the cluster printed

    def stop(self) -> int:
        stop_process(self.process, STOP_TIMEOUT)
        return self.process.returncode


def start_cluster(kubeconfig: Path, *extra_args: str) -> ClusterProcess:
    """Start `scripts/test-cluster` and return once it printed its `ready` line."""
    if os.geteuid() != 0:
        pytest.skip("the local test cluster needs root (network namespaces)")
    cmd = [sys.executable, str(REPO / "scripts" / "test-cluster"),
           "--kubeconfig", str(kubeconfig), *extra_args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    lines: list[str] = []
    ready = threading.Event()
    index_box: list[int] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if not ready.is_set() and READY_LINE in line:
                m = re.search(r"index[= ](\d+)", line)
                if m:
                    index_box.append(int(m.group(1)))
                ready.set()
        ready.set()  # the process ended: unblock the waiter

    threading.Thread(target=pump, daemon=True, name="test-cluster-output").start()
    ready.wait(READY_TIMEOUT)
    served = any(READY_LINE in x for x in lines)
    if proc.poll() is not None or not kubeconfig.exists() or not served:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        tail = "\n".join(lines[-40:])
        raise RuntimeError(f"test cluster did not become ready:\n{tail}")
    return ClusterProcess(str(kubeconfig), index_box[0] if index_box else -1, proc, lines)
