"""Start-up of the `bridge` command (issue 18): `bridge --help`, `bridge --version` and a shell
completion request, beside `python3 -c pass` (the floor any Python CLI stands on) and `kubectl
version --client` (what users compare with), in one run, as ratios.

Round-robin over the commands (drift on a shared machine hits each alike), median of the
rounds. Wall time of the whole process, as the user waits for it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.equipment.bench.cluster import kubectl_path

TARGET_SECONDS = 0.15  # issue 18: --help, --version and completion on this machine
BASELINE = "python3 -c pass"
ROUNDS = 15
QUICK_ROUNDS = 3


@dataclass(frozen=True)
class Command:
    label: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    bridge: bool = False  # one of bridge's own, held to TARGET_SECONDS


def bridge_argv() -> tuple[str, ...]:
    """The installed console script (what users run), else the module."""
    script = Path(sys.executable).parent / "bridge"
    return (str(script),) if script.exists() else (sys.executable, "-m", "bridge.cli")


def commands() -> list[Command]:
    b = bridge_argv()
    return [
        # the interpreter bridge runs on (`python3` on PATH may be a wrapper, pyenv's shim is a
        # shell script that costs more than bridge itself)
        Command(BASELINE, (sys.executable, "-c", "pass")),
        Command("kubectl version --client", (kubectl_path(), "version", "--client")),
        Command("bridge --help", (*b, "--help"), bridge=True),
        Command("bridge --version", (*b, "--version"), bridge=True),
        Command("bridge completion (bash, `bridge sw<TAB>`)", b,
                (("_BRIDGE_COMPLETE", "bash_complete"), ("COMP_WORDS", "bridge sw"),
                 ("COMP_CWORD", "1")), bridge=True),
    ]


@dataclass
class Timing:
    label: str
    bridge: bool
    rounds: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.rounds) if self.rounds else float("nan")


def measure(cmds: Sequence[Command], rounds: int,
            log: Callable[[str], None] = lambda _: None) -> list[Timing]:
    timings = [Timing(c.label, c.bridge) for c in cmds]
    log(f"start-up: {len(cmds)} commands, {rounds} rounds each")
    for _ in range(rounds + 1):  # the first round warms the page cache, not counted
        for c, t in zip(cmds, timings, strict=True):
            if t.error:
                continue
            start = time.perf_counter()
            try:
                r = subprocess.run(c.argv, env={**os.environ, **dict(c.env)},
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                t.error = f"{type(e).__name__}: {e}"
                continue
            took = time.perf_counter() - start
            if r.returncode != 0:
                t.error = f"exit {r.returncode}: {r.stderr.decode(errors='replace')[:200]}"
                continue
            t.rounds.append(took)
    for t in timings:
        t.rounds = t.rounds[1:]  # drop the warm-up
    return timings


def text(timings: Sequence[Timing]) -> str:
    """The section as printed: median seconds, ratio to `python3 -c pass` and to kubectl."""
    base = next((t.median for t in timings if t.label == BASELINE and not t.error), None)
    kubectl = next((t.median for t in timings if t.label.startswith("kubectl") and not t.error),
                   None)
    n = max((len(t.rounds) for t in timings), default=0)
    lines = [f"start-up (issue 18): median of {n} runs, wall time; bridge's target "
             f"< {TARGET_SECONDS:g} s",
             f"  {'command':<44} {'seconds':>8} {'x python':>9} {'x kubectl':>10}  target"]
    for t in timings:
        if t.error:
            lines.append(f"  {t.label:<44} not measured: {t.error}")
            continue
        vs_py = f"{t.median / base:.2f}x" if base else "-"
        vs_k = f"{t.median / kubectl:.2f}x" if kubectl else "-"
        met = ("met" if t.median < TARGET_SECONDS else "MISSED") if t.bridge else ""
        lines.append(f"  {t.label:<44} {t.median:>8.3f} {vs_py:>9} {vs_k:>10}  {met}")
    return "\n".join(lines)


def to_json(timings: Sequence[Timing]) -> dict[str, Any]:
    return {"target_seconds": TARGET_SECONDS, "baseline": BASELINE,
            "commands": [{"label": t.label, "bridge": t.bridge, "rounds": t.rounds,
                          "median": None if t.error else t.median, "error": t.error or None}
                         for t in timings]}
