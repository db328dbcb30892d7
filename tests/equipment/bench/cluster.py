"""The full path on the local test cluster, and the swap timing.

Starts ``scripts/test-cluster``, deploys the workload server as Deployment + Service
``bench`` (answering ``original``), then runs ``bridge swap bench --port P -- <workload
server answering child>``: a client -> the Service's ClusterIP -> the proxy pod -> sidecar ->
port-forward -> agent -> the local server. Swap timing: seconds from starting ``bridge swap``
to the first request the child answers through the Service, and seconds from Ctrl-C (SIGINT)
to bridge's exit with the original answering again. Median over ``swap_rounds`` swaps; the
last swap stays up for the workloads and is restored at teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from . import procs, workloads
from .paths import REPO, Endpoint
from .report import Results, median

NAME = "bench"
READY_TIMEOUT = 90.0
SWAP_TIMEOUT = 60.0
RESTORE_TIMEOUT = 60.0
ORIGINAL_BODY = b"original"
CHILD_BODY = b"child"


def kubectl_path() -> str:
    local = Path(sys.executable).parent / "kubectl"
    return str(local) if local.exists() else "kubectl"


def bridge_argv() -> list[str]:
    local = Path(sys.executable).parent / "bridge"
    if local.exists():
        return [str(local)]
    return [sys.executable, "-c", "import sys; from bridge.cli import main; sys.exit(main())"]


def manifest(port: int, name: str = NAME) -> str:
    """The Deployment and Service the benchmark swaps: the workload server answering
    ``original``, readiness by TCP, on ``port`` in the pod and the Service."""
    server = str(REPO / "tests" / "equipment" / "bench" / "server.py")
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: app
        image: bench/workload-server:1
        command: [python, "{server}", --host, 0.0.0.0, --port, "{port}", --body, original]
        ports:
        - containerPort: {port}
        readinessProbe:
          tcpSocket: {{port: {port}}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
  - port: {port}
    targetPort: {port}
"""


class TestCluster:
    def __init__(self, workdir: Path) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        self.proc = procs.Proc(
            "test-cluster",
            [sys.executable, str(REPO / "scripts" / "test-cluster"),
             "--kubeconfig", str(self.kubeconfig)],
            cwd=str(REPO), env=procs.python_env(),
        )

    def wait_ready(self) -> None:
        self.proc.wait_line(lambda s: "ready" in s, READY_TIMEOUT)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60.0) -> str:
        out = subprocess.run(
            [kubectl_path(), "--kubeconfig", str(self.kubeconfig), *args], input=input,
            capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()[:300]}")
        return out.stdout

    def pids(self, match: Callable[[list[str]], bool]) -> list[int]:
        """Descendants of the test cluster (pod processes) whose argv matches."""
        found = []
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if match(p.cmdline()):
                        found.append(p.pid)
        return found


def _is_sidecar(argv: list[str]) -> bool:
    return "sidecar" in argv and "-m" in argv


def wait_body(host: str, port: int, body: bytes, timeout: float,
              alive: Callable[[], bool] = lambda: True) -> float:
    """Poll ``GET /`` until the answer is ``body``; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"gave up waiting for {body!r}: the process ended")
        try:
            got = workloads.http_get(host, port, timeout=1.0)
            if got == body:
                return time.monotonic()
            last = f"answer {got!r}"
        except (OSError, workloads.WorkloadError) as exc:
            last = str(exc)
        time.sleep(0.01)
    raise RuntimeError(f"{host}:{port} did not answer {body!r} within {timeout:.0f}s ({last})")


class Swap:
    """One ``bridge swap`` session with the workload server as its child."""

    def __init__(self, cluster: TestCluster, port: int, log_file: Path | None = None) -> None:
        child = [sys.executable, str(REPO / "tests" / "equipment" / "bench" / "server.py"),
                 "--port", str(port), "--body", CHILD_BODY.decode()]
        logging = ["--log-file", str(log_file)] if log_file else []  # stamped: the profile
        self.start = time.monotonic()
        self.started_at = time.time()  # the log file's clock
        self.proc = procs.Proc(
            "bridge swap",
            [*bridge_argv(), "--kubeconfig", str(cluster.kubeconfig), *logging, "swap", NAME,
             "--port", str(port), "--", *child],
            cwd=str(REPO), env=procs.python_env({"CI": "true"}),
        )

    def restore(self, host: str, port: int) -> float:
        """Ctrl-C; seconds until bridge exited and the Service answers ``original`` again."""
        t0 = time.monotonic()
        self.proc.popen.send_signal(signal.SIGINT)
        try:
            self.proc.popen.wait(timeout=RESTORE_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"bridge swap did not exit within {RESTORE_TIMEOUT:.0f}s of "
                               f"Ctrl-C; output: {self.proc.tail()}") from None
        wait_body(host, port, ORIGINAL_BODY, RESTORE_TIMEOUT)
        return time.monotonic() - t0


@contextlib.contextmanager
def swapped(workdir: Path, swap_rounds: int, results: Results,
            log: Callable[[str], None]) -> Iterator[Endpoint]:
    if os.geteuid() != 0:
        raise RuntimeError("the local test cluster needs root (network namespaces)")
    if not (REPO / "scripts" / "test-cluster").exists():
        raise RuntimeError("scripts/test-cluster is not there yet")
    cluster = TestCluster(workdir)
    with procs.running(cluster.proc):
        cluster.wait_ready()
        port = procs.free_port()  # the child listens on 127.0.0.1:port on this machine
        cluster.kubectl("apply", "-f", "-", input=manifest(port))
        cluster.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=60s",
                        timeout=90)
        ip = cluster.kubectl("get", "service", NAME, "-o",
                             "jsonpath={.spec.clusterIP}").strip()
        if not re.fullmatch(r"10\.96\.\d+\.\d+", ip):
            raise RuntimeError(f"unexpected ClusterIP {ip!r} for service {NAME}")
        wait_body(ip, port, ORIGINAL_BODY, READY_TIMEOUT)
        starts: list[float] = []
        restores: list[float] = []
        swap: Swap | None = None
        try:
            for n in range(max(1, swap_rounds)):
                swap = Swap(cluster, port)
                served = wait_body(ip, port, CHILD_BODY, SWAP_TIMEOUT, swap.proc.alive)
                starts.append(served - swap.start)
                log(f"  swap {n + 1}: first request served by the child after "
                    f"{starts[-1]:.2f}s")
                if n < swap_rounds - 1:
                    restores.append(swap.restore(ip, port))
                    log(f"  swap {n + 1}: restored in {restores[-1]:.2f}s")
                    swap = None
            assert swap is not None
            results.record("swap_start", "cluster", median(starts), starts)
            sidecars = cluster.pids(_is_sidecar)
            processes = {"client": (swap.proc.pid, False)}
            if len(sidecars) == 1:
                processes["server"] = (sidecars[0], False)
            yield Endpoint(
                "cluster", ip, port, processes=processes,
                notes=[f"client -> Service {ip}:{port} -> proxy pod -> sidecar -> port-forward "
                       "-> bridge swap -> child (the workload server)"],
                carriers=[cluster.proc, swap.proc],
            )
            try:
                restores.append(swap.restore(ip, port))
                log(f"  swap {len(starts)}: restored in {restores[-1]:.2f}s")
                swap = None
                results.record("swap_restore", "cluster", median(restores), restores)
            except Exception as exc:  # noqa: BLE001 - reported in the table, not a crash
                results.fail("swap_restore", "cluster", f"{type(exc).__name__}: {exc}")
        finally:
            if swap is not None:  # an error or Ctrl-C: still let bridge restore
                with contextlib.suppress(Exception):
                    swap.proc.popen.send_signal(signal.SIGINT)
                    swap.proc.popen.wait(timeout=RESTORE_TIMEOUT)
                swap.proc.stop()
