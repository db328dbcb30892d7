"""The fault suite's short form, run by the test command: one run of a handful of faults on
the local test cluster, each must recover by itself (or be repaired) and leave the namespace
exactly as it was. `make faults` runs the full, counted form."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.equipment.faults import probe, suite
from tests.equipment.faults.counts import Run

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


@pytest.fixture(scope="module")
def bench(cluster: Any) -> Iterator[suite.Bench]:
    with suite.bench(Path(cluster.kubeconfig), print,
                     namespace=f"faults-{secrets.token_hex(2)}") as b:
        yield b


@pytest.fixture(scope="module")
def timings(bench: suite.Bench) -> tuple[float, float]:
    return suite.calibrate(bench)


def _clean(run: Run) -> None:
    assert run.changed == [], run.note


def test_the_detector_sees_a_changed_namespace(bench: suite.Bench) -> None:
    """The check every run ends with is not blind: a foreign annotation and a scaled
    Deployment are differences, and undoing them makes the namespace equal again."""
    assert bench.diff(bench.snapshot()) == []
    bench.kubectl("annotate", "deployment", suite.NAME, "faults.test/touched=1")
    try:
        assert any("Deployment/hello" in d for d in bench.diff(bench.snapshot()))
    finally:
        bench.kubectl("annotate", "deployment", suite.NAME, "faults.test/touched-")
    bench.kubectl("scale", "deployment", suite.NAME, "--replicas=1")
    try:
        assert any("Deployment/hello" in d for d in bench.diff(bench.snapshot()))
    finally:
        bench.kubectl("scale", "deployment", suite.NAME, f"--replicas={suite.REPLICAS}")
    assert bench.settled() == []


@pytest.mark.parametrize("fault", ["link reset mid-transfer", "link stall 30 s",
                                   "proxy pod deleted", "sidecar killed",
                                   f"API server unreachable {suite.APISERVER_DOWN_SECONDS:g} s"])
def test_the_session_recovers_by_itself(bench: suite.Bench, timings: tuple[float, float],
                                        fault: str) -> None:
    """Traffic reaches the laptop again without anyone acting, the command is never
    restarted (same processes), and Ctrl-C then leaves the namespace as it was."""
    run = suite.run_fault(bench, fault)
    print(run)
    _clean(run)
    assert run.recovered, run.note
    assert run.recover_s is not None


@pytest.mark.parametrize("n", [0, 1, 3])
def test_sigkill_then_repair_leaves_nothing(bench: suite.Bench, timings: tuple[float, float],
                                            n: int) -> None:
    """bridge SIGKILLed in its set-up (n=0: then `bridge restore`; n=1: then the next swap)
    or in its restore (n=3, then the next swap): the namespace ends as it was, and the Service
    is answered by the cluster again."""
    setup_s, restore_s = timings
    run = suite.run_kill(bench, n, random.Random(n), setup_s * 1.1, restore_s)
    print(run)
    _clean(run)
    assert run.recover_s is not None, run.note
    assert probe.http_get(bench.ip, 80, 5.0) == probe.CLUSTER
