"""Start `scripts/real-cluster` for a test session (or use one already running), for the one
`cluster` fixture of tests/e2e (BRIDGE_TEST_CLUSTER=real) and the real cluster's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import stop_process

REPO = Path(__file__).resolve().parents[3]
READY_LINE = "real cluster ready"
# Bounds, not expectations: a first start on a machine compiles Kubernetes (`make test` builds
# before pytest starts, so inside the suite this is the warm start plus slack).
READY_TIMEOUT = float(os.environ.get("BRIDGE_REAL_CLUSTER_TIMEOUT", 3600))
STOP_TIMEOUT = 120.0
SETTING = "BRIDGE_TEST_CLUSTER"
EXISTING = "BRIDGE_REAL_KUBECONFIG"  # a real cluster someone already runs: use, do not stop
SETTINGS = (SETTING, EXISTING, "BRIDGE_REAL_CLUSTER_TIMEOUT")  # the test harness's, not bridge's


def selected() -> str:
    value = os.environ.get(SETTING, "local")
    if value not in ("local", "real"):
        raise ValueError(f"{SETTING} must be `local` or `real`, not {value!r}")
    return value


@dataclass
class RealClusterProcess:
    kubeconfig: str
    process: subprocess.Popen[str] | None
    output: list[str] = field(default_factory=list)
    index: int = -1  # the local test cluster's field; the real cluster has no index
    reader: threading.Thread | None = None

    def stop(self) -> int:
        if self.process is None:
            return 0
        stop_process(self.process, STOP_TIMEOUT)
        if self.reader is not None:
            self.reader.join(timeout=10)  # so `output` has the last lines
        return self.process.returncode


def start(kubeconfig: Path) -> RealClusterProcess:
    existing = os.environ.get(EXISTING)
    if existing:
        return RealClusterProcess(existing, None)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "real-cluster"), "--kubeconfig",
         str(kubeconfig)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if not ready.is_set():
                sys.stderr.write(f"[real-cluster] {line}")
            if READY_LINE in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True, name="real-cluster-output")
    reader.start()
    ready.wait(READY_TIMEOUT)
    if proc.poll() is not None or not any(READY_LINE in x for x in lines):
        stop_process(proc, STOP_TIMEOUT)
        tail = "\n".join(lines[-40:])
        raise RuntimeError(f"the real cluster did not become ready:\n{tail}")
    return RealClusterProcess(str(kubeconfig), proc, lines, reader=reader)


_shared: RealClusterProcess | None = None
_users = 0


def acquire(kubeconfig: Path) -> RealClusterProcess:
    """The session's one real cluster, started by whichever fixture asks first (tests/e2e and
    tests/realcluster share it; two cannot run at once)."""
    global _shared, _users
    if _shared is None:
        _shared = start(kubeconfig)
    _users += 1
    return _shared


def release() -> None:
    global _shared, _users
    _users -= 1
    if _users == 0 and _shared is not None:
        _shared.stop()
        _shared = None
