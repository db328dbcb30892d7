"""The fault suite's outcomes: one ``Run`` per injected fault, and the table counted from them.
Pure functions of data (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Run:
    fault: str
    # True/False: the session carried traffic again by itself (bridge still running, the laptop
    # answering through the Service); None where that is not the question (bridge was killed,
    # and `bridge restore` or the next swap repaired)
    recovered: bool | None
    recover_s: float | None  # fault over -> traffic flows again (stable); None: never
    failed_requests: int  # probe requests and transfers that failed from the fault to recovery
    changed: list[str] = field(default_factory=list)  # the cluster after restore vs before
    seconds: float = 0.0  # wall time of the whole run
    note: str = ""


def _pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def summary(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per fault, in first-seen order."""
    order: list[str] = []
    for r in runs:
        if r.fault not in order:
            order.append(r.fault)
    rows = []
    for fault in order:
        rs = [r for r in runs if r.fault == fault]
        times = [r.recover_s for r in rs if r.recover_s is not None]
        applicable = [r for r in rs if r.recovered is not None]
        rows.append({
            "fault": fault,
            "runs": len(rs),
            "recovered": (sum(1 for r in applicable if r.recovered) if applicable else None),
            "recover_p50": _pct(times, 50) if times else None,
            "recover_max": max(times) if times else None,
            "never": sum(1 for r in rs if r.recover_s is None),
            "failed_requests": sum(r.failed_requests for r in rs),
            "failed_max": max((r.failed_requests for r in rs), default=0),
            "changed": sum(1 for r in rs if r.changed),
            "seconds_per_run": sum(r.seconds for r in rs) / len(rs),
        })
    return rows


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(runs: Sequence[Run]) -> str:
    head = (f"{'fault':34} {'runs':>4} {'recovered':>9} {'recover p50/max s':>17} "
            f"{'failed req (max/run)':>20} {'changed':>7} {'s/run':>6}")
    lines = [head, "-" * len(head)]
    for row in summary(runs):
        rec = "n/a" if row["recovered"] is None else f"{row['recovered']}/{row['runs']}"
        times = f"{_s(row['recover_p50'])}/{_s(row['recover_max'])}"
        if row["never"]:
            times += f" ({row['never']} never)"
        failed = f"{row['failed_requests']} ({row['failed_max']})"
        lines.append(f"{row['fault']:34} {row['runs']:>4} {rec:>9} {times:>17} {failed:>20} "
                     f"{row['changed']:>7} {row['seconds_per_run']:>6.1f}")
    return "\n".join(lines)


def changed_runs(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if r.changed]


def to_json(runs: Sequence[Run]) -> dict[str, Any]:
    return {"summary": summary(runs), "runs": [asdict(r) for r in runs]}
