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

# -- which cluster a test runs on ----------------------------------------------------------------
# `make test` runs this suite twice, on the local test cluster and on the real one. A test whose
# behaviour does not depend on the cluster (the laptop's side: env files, CLI errors, signals,
# local ports, terminal output, the debugger) runs on one of them only, chosen on purpose and
# said in the test: `@pytest.mark.only_on("local", why="...")` (or a module's `pytestmark`).
# `real` where the real cluster is the authority (volumes, controllers, admission, RBAC, the
# kubelet's restarts and probes). Unmarked tests (the swap, restore and hand-back themselves)
# run on both. On the other cluster the test is deselected before any fixture is set up, and
# the end of the run lists what was left out and why.
ONLY_ON = "only_on"
CLUSTERS = ("local", "real")
_left_out: list[tuple[str, str, str]] = []  # (nodeid, cluster it runs on, why)


def only_on(item: pytest.Item) -> tuple[str, str] | None:
    """The cluster ITEM runs on and why, from its closest `only_on` marker; None: both."""
    mark = item.get_closest_marker(ONLY_ON)
    if mark is None:
        return None
    where = mark.args[0] if len(mark.args) == 1 else None
    why = str(mark.kwargs.get("why") or "").strip()
    if where not in CLUSTERS or set(mark.kwargs) != {"why"} or not why:
        raise pytest.UsageError(
            f"{item.nodeid}: write @pytest.mark.{ONLY_ON}(\"local\" or \"real\", why=\"...\"), "
            f"not {ONLY_ON}{mark.args!r} {mark.kwargs!r}")
    return where, why


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = real_cluster.selected()
    keep: list[pytest.Item] = []
    gone: list[pytest.Item] = []
    for item in items:
        chosen = only_on(item)
        if chosen is None or chosen[0] == here:
            keep.append(item)
        else:
            gone.append(item)
            _left_out.append((item.nodeid, *chosen))
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _left_out:
        return
    by_reason: dict[tuple[str, str], list[str]] = {}
    for nodeid, where, why in _left_out:
        by_reason.setdefault((where, why), []).append(nodeid)
    tr = terminalreporter
    tr.section(f"left out: they run on the other cluster ({len(_left_out)} tests, {ONLY_ON})")
    for (where, why), ids in by_reason.items():
        tr.write_line(f"{where} only ({len(ids)}): {why}")
        for nodeid in ids:
            tr.write_line(f"    {nodeid}")


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
