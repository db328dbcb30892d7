"""The end-to-end suite's fixtures: the one cluster it runs on (BRIDGE_TEST_CLUSTER), kubectl
and the official client for it, and the sample workload per test (`make_workload`, with the
check that the cluster is restored; defined in support.py, which the real cluster's own tests
share). What the tests import (the workload, `bridge` as a subprocess, HTTP helpers) is in
support.py: a conftest is never imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.support import make_workload, namespace  # noqa: F401  (fixtures, shared)
from tests.equipment.clients import Kubectl, official_client
from tests.equipment.localcluster.fixture import start_cluster
from tests.equipment.realcluster import fixture as real_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The one cluster this suite runs on, chosen by BRIDGE_TEST_CLUSTER: `local` (default, the
    test cluster in tests/equipment/localcluster) or `real` (scripts/real-cluster: upstream
    Kubernetes)."""
    kubeconfig = tmp_path_factory.mktemp("cluster") / "kubeconfig"
    if real_cluster.selected() == "real":
        real = real_cluster.acquire(kubeconfig)
        try:
            yield real
        finally:
            real_cluster.release()
        return
    running = start_cluster(kubeconfig)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def kubectl(cluster: Any) -> Kubectl:
    """kubectl for THIS suite's cluster. The root conftest's session-wide `kubectl` is bound to
    whichever `cluster` first asked for it (the test-cluster checks' own, in a full run), which
    would send this suite's objects to another cluster than bridge talks to."""
    return Kubectl(cluster.kubeconfig)


@pytest.fixture(scope="session")
def api_client(cluster: Any) -> Iterator[object]:
    """The official (sync) client for THIS suite's cluster (see `kubectl`)."""
    yield from official_client(cluster.kubeconfig)
