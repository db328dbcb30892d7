"""Shared pytest fixtures: the local test cluster as a subprocess, and kubectl against it.

`cluster` (session scope) runs `scripts/test-cluster --kubeconfig <tmp>` in the foreground as
a child process, waits (bounded) for its `ready` line and stops it with SIGTERM at teardown
(tests/equipment/localcluster/fixture.py). Tests that need it are marked
`@pytest.mark.cluster`. What tests import (`Kubectl`, `KUBECTL`, `start_cluster`) lives in
tests/equipment/: a conftest is never imported.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.equipment.clients import Kubectl, official_client
from tests.equipment.localcluster.fixture import ClusterProcess, start_cluster

# A suite started as a background job of a non-interactive shell inherits SIGINT ignored, and an
# ignored signal stays ignored across exec: every bridge, command and helper the tests start would
# then shrug off the Ctrl-C the tests send. With a handler here, children start with the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    kubeconfig = tmp_path_factory.mktemp("cluster") / "kubeconfig"
    running = start_cluster(kubeconfig)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterProcess) -> Kubectl:
    return Kubectl(cluster.kubeconfig)


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
