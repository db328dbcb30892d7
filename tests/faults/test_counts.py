"""The fault suite's counting (pure): recovery points, failures in a window, the table."""

from __future__ import annotations

from tests.equipment.faults import counts, probe
from tests.equipment.faults.probe import CLUSTER, FAIL, LAPTOP, Sample


def _samples(outcomes: str, step: float = 1.0) -> list[Sample]:
    kind = {"L": LAPTOP, "C": CLUSTER, "x": FAIL}
    return [Sample(i * step, i * step + 0.5, kind[c]) for i, c in enumerate(outcomes)]


def test_recovery_is_the_start_of_the_last_stable_streak() -> None:
    s = _samples("LLxxLLxLLLLLL")
    assert probe.recovery(s, since=2.0, want=[LAPTOP], stable=5) == 7.0
    # a streak shorter than `stable` is not a recovery
    assert probe.recovery(_samples("xxLLLx"), since=0.0, want=[LAPTOP], stable=3) is None
    # samples before `since` do not count
    assert probe.recovery(_samples("LLLLLxx"), since=5.0, want=[LAPTOP], stable=1) is None
    assert probe.recovery(_samples("xxCCC"), since=0.0, want=[LAPTOP], stable=1) is None


def test_failures_count_only_the_window() -> None:
    s = _samples("xLxxLx")
    assert probe.failures(s, 0.0, None) == 4
    assert probe.failures(s, 1.6, 3.0) == 2
    assert probe.failures(s, 1.6, 2.9) == 1


def test_summary_counts_per_fault() -> None:
    runs = [
        counts.Run("stall", True, 1.0, 3, seconds=10),
        counts.Run("stall", False, None, 7, changed=["Deployment/hello differs"], seconds=20),
        counts.Run("stall", True, 3.0, 0, seconds=12),
        counts.Run("kill", None, 2.0, 1, seconds=5),
    ]
    rows = {r["fault"]: r for r in counts.summary(runs)}
    assert rows["stall"] == {"fault": "stall", "runs": 3, "recovered": 2, "recover_p50": 1.0,
                             "recover_max": 3.0, "never": 1, "failed_requests": 10,
                             "failed_max": 7, "changed": 1, "seconds_per_run": 14.0}
    assert rows["kill"]["recovered"] is None
    assert [r.fault for r in counts.changed_runs(runs)] == ["stall"]
    text = counts.table(runs)
    assert "n/a" in text and "2/3" in text and "(1 never)" in text
