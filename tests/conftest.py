"""Shared pytest fixtures: the local test cluster as a subprocess, and kubectl against it.

`cluster` (session scope) runs `scripts/test-cluster --kubeconfig <tmp>` in the foreground as
a child process, waits (bounded) for its `ready` line and stops it with SIGTERM at teardown.
Tests that need it are marked `@pytest.mark.cluster`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import stop_process

# A suite started as a background job of a non-interactive shell inherits SIGINT ignored, and an
# ignored signal stays ignored across exec: every bridge, command and helper the tests start would
# then shrug off the Ctrl-C the tests send. With a handler here, children start with the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
KUBECTL = str(VENV_BIN / "kubectl") if (VENV_BIN / "kubectl").exists() else "kubectl"
READY_TIMEOUT = 60.0
READY_LINE = "test cluster ready"  # what scripts/test-cluster prints once it serves
STOP_TIMEOUT = 30.0
T = TypeVar("T")


@pytest.fixture(scope="session", autouse=True)
def own_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """bridge's state on this machine (records of sessions and mounts, under $XDG_STATE_HOME)
    lives in a directory of this test run, for every bridge the tests start: a record another
    run left (a killed bridge's) never decides what a test sees, and the user's own records
    are left alone."""
    home = tmp_path_factory.mktemp("state-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(home))
        yield home


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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    kubeconfig = tmp_path_factory.mktemp("cluster") / "kubeconfig"
    running = start_cluster(kubeconfig)
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Kubectl:
    kubeconfig: str

    @property
    def cache_dir(self) -> str:
        """kubectl's discovery/HTTP cache, beside the kubeconfig (not in ~/.kube/cache)."""
        return str(Path(self.kubeconfig).parent / "kubectl-cache")

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run kubectl; with check=True a non-zero exit fails the test showing stderr."""
        result = subprocess.run(
            [KUBECTL, "--kubeconfig", self.kubeconfig, "--cache-dir", self.cache_dir, *args],
            input=input, capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 60.0) -> str:
        return self.run(*args, input=input, check=check, timeout=timeout).stdout


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterProcess) -> Kubectl:
    return Kubectl(cluster.kubeconfig)


def official_client(kubeconfig: str) -> Iterator[object]:
    """The official (sync) client's ApiClient for the kubeconfig's current-context, closed
    when the generator ends (the body of every `api_client` fixture)."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=kubeconfig)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def api_client(cluster: ClusterProcess) -> Iterator[object]:
    """The official (sync) client's ApiClient for the current-context (bearer-token admin)."""
    yield from official_client(cluster.kubeconfig)


@pytest.fixture(scope="session")
def core_v1(api_client: object) -> object:
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def apps_v1(api_client: object) -> object:
    from kubernetes import client

    return client.AppsV1Api(api_client)


@pytest.fixture
def namespace(core_v1: object) -> Iterator[str]:
    """A fresh namespace for one test, deleted (with everything in it) afterwards."""
    import uuid

    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))  # type: ignore[attr-defined]
    try:
        yield name
    finally:
        core_v1.delete_namespace(name, grace_period_seconds=0)  # type: ignore[attr-defined]


def _wait_until(predicate: Callable[[], T | None | bool], timeout: float = 20.0,
                message: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy (bounded: a hang guard, not a
    timing assertion); returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., Any]:
    return _wait_until


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., ClusterProcess]]:
    """Start extra test cluster instances (e.g. to check startup and shutdown); each is
    stopped at teardown if the test did not stop it."""
    started: list[ClusterProcess] = []

    def start(*extra_args: str) -> ClusterProcess:
        running = start_cluster(tmp_path / f"kubeconfig-{len(started)}", *extra_args)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            running.stop()
