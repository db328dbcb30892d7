"""Fixtures for the real cluster's own tests: they run when BRIDGE_TEST_CLUSTER=real (the second
e2e pass of `make test`) and share the session's one real cluster with tests/e2e."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# The e2e suite's workload fixtures (a sample Deployment + Service per test, restored check).
from tests.e2e.support import make_workload, namespace  # noqa: F401
from tests.equipment.realcluster import fixture as real_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if real_cluster.selected() != "real":
        pytest.skip("the real cluster's tests run with BRIDGE_TEST_CLUSTER=real (make test)")
    running = real_cluster.acquire(tmp_path_factory.mktemp("real-cluster") / "kubeconfig")
    try:
        yield running
    finally:
        real_cluster.release()
