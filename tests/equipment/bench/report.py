"""The benchmark's results: figures per path, ratios to OpenSSH and to the limit, targets,
the table on stdout and the JSON document. Pure functions of data; no I/O but ``write_json``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PATHS = ("limit", "openssh", "tunnel", "cluster")
PATH_TITLES = {
    "limit": "limit (loopback)",
    "openssh": "OpenSSH ssh -R",
    "tunnel": "bridge tunnel",
    "cluster": "bridge cluster",
}
REFERENCE = "openssh"
LIMIT = "limit"


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    ratios: bool = True  # False for counts, where a ratio means nothing


FIGURES = (
    Figure("upload", "bulk upload (client->server)", "MB/s"),
    Figure("download", "bulk download (server->client)", "MB/s"),
    Figure("upload_cpu", "CPU of tunnel processes, upload", "s/GB"),
    Figure("download_cpu", "CPU of tunnel processes, download", "s/GB"),
    Figure("rtt_p50", "round trip 64 B, p50", "ms"),
    Figure("rtt_p99", "round trip 64 B, p99", "ms"),
    Figure("connect_p50", "new connection + first byte, p50", "ms"),
    Figure("connect_p99", "new connection + first byte, p99", "ms"),
    Figure("http_keepalive", "HTTP keep-alive (wrk)", "req/s"),
    Figure("http_newconn", "HTTP new connection each (wrk)", "req/s"),
    Figure("http_errors", "HTTP errors (wrk, all runs)", "count", ratios=False),
    Figure("burst_errors", "1,000 concurrent: errors", "count", ratios=False),
    Figure("burst_seconds", "1,000 concurrent: total time", "s"),
    Figure("rss_client", "peak RSS agent/ssh, 1,000 conns", "MB"),
    Figure("rss_server", "peak RSS sidecar/sshd, 1,000 conns", "MB"),
    Figure("restarts", "path died, set up again (times)", "count", ratios=False),
    Figure("swap_start", "swap: start to first request served", "s", ratios=False),
    Figure("swap_restore", "swap: restore", "s", ratios=False),
)
FIGURE_BY_KEY = {f.key: f for f in FIGURES}


@dataclass
class Measurement:
    value: float
    rounds: list[float] = field(default_factory=list)


@dataclass
class PathInfo:
    available: bool
    reason: str = ""  # why it is not available
    notes: list[str] = field(default_factory=list)


@dataclass
class Results:
    paths: dict[str, PathInfo] = field(default_factory=dict)
    # figure key -> path -> measurement, or the error that prevented it
    figures: dict[str, dict[str, Measurement | str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    tuning: list[dict[str, Any]] = field(default_factory=list)

    def record(self, key: str, path: str, value: float, rounds: Sequence[float] = ()) -> None:
        self.figures.setdefault(key, {})[path] = Measurement(value, list(rounds) or [value])

    def fail(self, key: str, path: str, error: str) -> None:
        self.figures.setdefault(key, {})[path] = error

    def value(self, key: str, path: str) -> float | None:
        m = self.figures.get(key, {}).get(path)
        return m.value if isinstance(m, Measurement) else None


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    s = sorted(xs)
    rank = max(1, math.ceil(p / 100 * len(s)))
    return s[rank - 1]


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


# -- targets (issue 5), evaluated on the same run ----------------------------------------

@dataclass(frozen=True)
class Target:
    label: str
    figure: str
    path: str
    bound: float
    kind: str  # "min_ratio", "max_ratio" (vs OpenSSH), "max_value", "zero"


TARGETS = (
    Target("tunnel bulk upload >= 0.6x OpenSSH", "upload", "tunnel", 0.6, "min_ratio"),
    Target("tunnel bulk download >= 0.6x OpenSSH", "download", "tunnel", 0.6, "min_ratio"),
    Target("tunnel new connection p50 <= 0.1x OpenSSH", "connect_p50", "tunnel", 0.1,
           "max_ratio"),
    Target("tunnel round trip p50 <= 2x OpenSSH", "rtt_p50", "tunnel", 2.0, "max_ratio"),
    Target("tunnel 1,000 concurrent: zero errors", "burst_errors", "tunnel", 0, "zero"),
    Target("cluster 1,000 concurrent: zero errors", "burst_errors", "cluster", 0, "zero"),
    Target("tunnel never died during the run", "restarts", "tunnel", 0, "zero"),
    Target("cluster path never died during the run", "restarts", "cluster", 0, "zero"),
    Target("swap to first request served <= 3 s", "swap_start", "cluster", 3.0, "max_value"),
    Target("agent RSS <= 100 MB under load (tunnel)", "rss_client", "tunnel", 100.0,
           "max_value"),
    Target("agent RSS <= 100 MB under load (bridge swap)", "rss_client", "cluster", 100.0,
           "max_value"),
)


def evaluate(results: Results, target: Target) -> dict[str, Any]:
    value = results.value(target.figure, target.path)
    out: dict[str, Any] = {"target": target.label, "figure": target.figure,
                           "path": target.path, "bound": target.bound}
    if value is None:
        m = results.figures.get(target.figure, {}).get(target.path)
        info = results.paths.get(target.path)
        out.update(met=None, detail=(
            m if isinstance(m, str) else (info.reason if info and info.reason else "not measured")
        ))
        return out
    if target.kind in ("min_ratio", "max_ratio"):
        r = ratio(value, results.value(target.figure, REFERENCE))
        if r is None:
            out.update(met=None, detail="no OpenSSH figure to compare with")
            return out
        met = r >= target.bound if target.kind == "min_ratio" else r <= target.bound
        out.update(value=r, met=met, detail=f"{r:.2f}x OpenSSH")
    elif target.kind == "zero":
        noun = "errors" if "errors" in target.figure else "times"
        out.update(value=value, met=value == 0, detail=f"{value:g} {noun}")
    else:
        out.update(value=value, met=value <= target.bound, detail=f"{fmt(value)}")
    return out


# -- rendering ---------------------------------------------------------------------------

def fmt(x: float) -> str:
    """Three significant digits, no exponent for the magnitudes we print."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f}"


def _cell(results: Results, fig: Figure, path: str) -> str:
    m = results.figures.get(fig.key, {}).get(path)
    if m is None:
        info = results.paths.get(path)
        return "n/a" if info is None or info.available else "-"
    if isinstance(m, str):
        return "error"
    text = f"{m.value:,.0f}" if fig.unit == "count" else fmt(m.value)
    if fig.ratios and path not in (REFERENCE, LIMIT):
        ro = ratio(m.value, results.value(fig.key, REFERENCE))
        rl = ratio(m.value, results.value(fig.key, LIMIT))
        text += " (" + "/".join("-" if r is None else f"{r:.2f}x" for r in (ro, rl)) + ")"
    elif fig.ratios and path == REFERENCE:
        rl = ratio(m.value, results.value(fig.key, LIMIT))
        text += "" if rl is None else f" ({rl:.2f}x)"
    return text


def table(results: Results) -> str:
    shown = [p for p in PATHS if p in results.paths]
    rows = [["figure", "unit", *(PATH_TITLES[p] for p in shown)]]
    for fig in FIGURES:
        if fig.key not in results.figures:
            continue
        rows.append([fig.label, fig.unit, *(_cell(results, fig, p) for p in shown)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    out = ["\n".join(lines),
           "bridge columns: value (x OpenSSH / x limit); OpenSSH column: value (x limit).",
           "Absolute numbers vary by machine; compare the ratios."]
    for p in shown:
        info = results.paths[p]
        if not info.available:
            out.append(f"{PATH_TITLES[p]}: not available: {info.reason}")
        for note in info.notes:
            out.append(f"{PATH_TITLES[p]}: {note}")
    errors: dict[tuple[str, str], list[str]] = {}
    for key, per_path in results.figures.items():
        for p, m in per_path.items():
            if isinstance(m, str):
                errors.setdefault((p, m), []).append(key)
    for (p, m), keys in errors.items():
        out.append(f"{PATH_TITLES.get(p, p)}: error in {', '.join(keys)}: {m}")
    return "\n".join(out)


def targets_text(results: Results) -> str:
    lines = ["targets (issue 5):"]
    for t in TARGETS:
        e = evaluate(results, t)
        mark = {True: "met   ", False: "MISSED", None: "n/a   "}[e["met"]]
        lines.append(f"  {mark} {t.label}: {e['detail']}")
    return "\n".join(lines)


def tuning_text(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = ["upload", "download", "upload_cpu", "download_cpu", "rtt_p50", "connect_p50"]
    units = ["MB/s", "MB/s", "CPU s/GB", "CPU s/GB", "ms", "ms"]
    w = max(len("setting"), *(len(str(r["setting"])) for r in rows)) + 2
    lines = ["tuning sweep over the loopback tunnel (median of rounds):",
             "  " + "setting".ljust(w) + "".join(k.rjust(13) for k in keys),
             "  " + "".ljust(w) + "".join(u.rjust(13) for u in units)]
    for row in rows:
        vals = "".join(
            (fmt(row[k]) if isinstance(row.get(k), int | float) else str(row.get(k, "-")))
            .rjust(13) for k in keys
        )
        lines.append("  " + str(row["setting"]).ljust(w) + vals)
        if row.get("error"):
            lines.append(f"    not available: {row['error']}")
    return "\n".join(lines)


def to_json(results: Results) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for fig in FIGURES:
        per_path = results.figures.get(fig.key)
        if not per_path:
            continue
        entry: dict[str, Any] = {"label": fig.label, "unit": fig.unit, "paths": {}}
        for p, m in per_path.items():
            if isinstance(m, str):
                entry["paths"][p] = {"error": m}
                continue
            d: dict[str, Any] = {"value": m.value, "rounds": m.rounds}
            if fig.ratios:
                d["vs_openssh"] = ratio(m.value, results.value(fig.key, REFERENCE))
                d["vs_limit"] = ratio(m.value, results.value(fig.key, LIMIT))
            entry["paths"][p] = d
        figures[fig.key] = entry
    return {
        "meta": results.meta,
        "paths": {p: {"title": PATH_TITLES[p], "available": i.available, "reason": i.reason,
                      "notes": i.notes} for p, i in results.paths.items()},
        "figures": figures,
        "targets": [evaluate(results, t) for t in TARGETS],
        "tuning": results.tuning,
    }


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(to_json(results), indent=2) + "\n")
