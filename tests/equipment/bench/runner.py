"""Run the benchmark: set up every path, run each workload round-robin over the paths (so
drift on a shared machine hits them alike), collect figures, tear everything down.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import paths, procs, report, workloads, wrk
from .paths import OPENSSH_CIPHER
from .report import Measurement, PathInfo, Results, median, percentile
from .server import raise_fd_limit

MB = 1e6
ALL_PATHS = ("limit", "openssh", "tunnel", "cluster")
WORKLOADS = ("bulk", "rtt", "connect", "http", "burst")


@dataclass(frozen=True)
class Config:
    paths: tuple[str, ...] = ALL_PATHS
    rounds: int = 3
    bulk_seconds: float = 1.0  # each measured transfer is sized to take about this long
    bulk_calibrate_bytes: int = 32 * 1024 * 1024
    bulk_max_bytes: int = 2 * 1024 * 1024 * 1024
    rtt_count: int = 5000
    rtt_seconds: float = 1.0
    connect_count: int = 500
    connect_seconds: float = 1.5
    wrk_seconds: float = 2.0
    wrk_connections: int = 16
    burst_connections: int = 1000
    burst_rounds: int = 2
    burst_timeout: float = 60.0
    openssh_cipher: str | None = OPENSSH_CIPHER
    swap_rounds: int = 3
    tunnel_tuning: dict[str, Any] = field(default_factory=dict)
    workloads: tuple[str, ...] = WORKLOADS


QUICK = Config(rounds=1, bulk_seconds=0.3, bulk_calibrate_bytes=8 * 1024 * 1024, rtt_count=500,
               rtt_seconds=0.3, connect_count=50, connect_seconds=0.5, wrk_seconds=1.0,
               burst_rounds=1, swap_rounds=1)

# How the rounds of a figure combine into the reported figure.
_SUM = {"http_keepalive_errors", "http_newconn_errors", "burst_errors"}
_MAX = {"rss_client", "rss_server"}

RoundFn = Callable[[paths.Endpoint], dict[str, float]]
MAX_RESTARTS = 12  # bounded: a path that keeps dying is set up again at most this often


class Slot:
    """One path's setup. A loopback path whose processes died is set up again (at most
    ``MAX_RESTARTS`` times) and the death is noted, so one crash does not blank the rest."""

    def __init__(self, name: str, factory: Callable[[], AbstractContextManager[paths.Endpoint]],
                 restartable: bool) -> None:
        self.name = name
        self._factory = factory
        self._restartable = restartable
        self._stack = contextlib.ExitStack()
        self.restarts = 0
        self.ep = self._stack.enter_context(factory())

    def ready(self, results: Results, what: str, log: Callable[[str], None]) -> str:
        """Empty if the path can run ``what`` (set up again if it died), else why not."""
        dead = self.ep.dead()
        if not dead:
            return ""
        note = f"the path died before {what}: {dead}"
        log(f"  {self.name}: {note}")
        notes = results.paths[self.name].notes
        if note not in notes:
            notes.append(note)
        if not self._restartable or self.restarts >= MAX_RESTARTS:
            return f"path dead: {dead}"
        self.close()
        self._stack = contextlib.ExitStack()
        self.restarts += 1
        self.ep = self._stack.enter_context(self._factory())
        return ""

    def close(self) -> None:
        self._stack.close()


def _combine(key: str, xs: Sequence[float]) -> float:
    if key in _SUM:
        return float(sum(xs))
    if key in _MAX:
        return max(xs)
    return median(xs)


def run_rounds(results: Results, slots: dict[str, Slot], rounds: int, keys: Sequence[str],
               fn: RoundFn, log: Callable[[str], None]) -> None:
    """``fn`` once per round per path, round-robin; a path that fails drops out (its error
    is recorded against every key of this workload)."""
    samples: dict[str, dict[str, list[float]]] = {p: {k: [] for k in keys} for p in slots}
    live = dict(slots)
    for _ in range(rounds):
        for name, slot in list(live.items()):
            try:
                why = slot.ready(results, keys[0], log)
                if why:
                    raise RuntimeError(why)
                got = fn(slot.ep)
            except Exception as exc:  # noqa: BLE001 - one path failing must not stop the rest
                msg = f"{type(exc).__name__}: {exc}"
                dead = slot.ep.dead()
                if dead and dead not in msg:
                    msg += f" (the path died: {dead})"
                log(f"  {name}: {keys[0]}: {msg}")
                for k in keys:
                    results.fail(k, name, msg)
                del live[name]
                continue
            for k, v in got.items():
                samples[name][k].append(v)
    for name in live:
        for k in keys:
            xs = samples[name][k]
            if xs:
                results.record(k, name, _combine(k, xs), xs)


def measure(results: Results, endpoints: dict[str, Slot], cfg: Config,
            log: Callable[[str], None]) -> None:
    # Bulk: size each path's transfers from a calibration transfer (also the warm-up).
    bulk_keys = ("upload", "download") if "bulk" in cfg.workloads else ()
    for key, transfer in zip(bulk_keys, (workloads.bulk_upload, workloads.bulk_download),
                             strict=False):
        log(f"bulk {key}")
        sizes: dict[str, int] = {}

        def bulk(ep: paths.Endpoint, transfer: Callable[..., float] = transfer,
                 sizes: dict[str, int] = sizes, key: str = key) -> dict[str, float]:
            if ep.name not in sizes:
                secs = transfer(ep.host, ep.port, cfg.bulk_calibrate_bytes)
                rate = cfg.bulk_calibrate_bytes / secs
                sizes[ep.name] = int(min(cfg.bulk_max_bytes,
                                         max(cfg.bulk_calibrate_bytes, rate * cfg.bulk_seconds)))
            n = sizes[ep.name]
            cpu0 = procs.cpu_seconds(ep.processes)
            out = {key: n / transfer(ep.host, ep.port, n) / MB}
            if ep.processes:  # the tunnel's own processes, CPU seconds per GB carried
                out[f"{key}_cpu"] = (procs.cpu_seconds(ep.processes) - cpu0) / (n / 1e9)
            return out

        run_rounds(results, endpoints, cfg.rounds, [key, f"{key}_cpu"], bulk, log)

    def rtt(ep: paths.Endpoint) -> dict[str, float]:
        xs = workloads.round_trips(ep.host, ep.port, cfg.rtt_count, cfg.rtt_seconds)
        return {"rtt_p50": percentile(xs, 50) * 1e3, "rtt_p99": percentile(xs, 99) * 1e3}

    if "rtt" in cfg.workloads:
        log("round trip")
        run_rounds(results, endpoints, cfg.rounds, ["rtt_p50", "rtt_p99"], rtt, log)

    def connect(ep: paths.Endpoint) -> dict[str, float]:
        xs = workloads.connect_first_byte(ep.host, ep.port, cfg.connect_count,
                                          cfg.connect_seconds)
        return {"connect_p50": percentile(xs, 50) * 1e3,
                "connect_p99": percentile(xs, 99) * 1e3}

    if "connect" in cfg.workloads:
        log("new connection + first byte")
        run_rounds(results, endpoints, cfg.rounds, ["connect_p50", "connect_p99"], connect, log)

    if "http" not in cfg.workloads:
        pass
    elif wrk.available():
        log("HTTP (wrk)")

        for key, new_connection in (("http_keepalive", False), ("http_newconn", True)):

            def http(ep: paths.Endpoint, key: str = key,
                     new_connection: bool = new_connection) -> dict[str, float]:
                got = wrk.run(ep.host, ep.port, seconds=cfg.wrk_seconds,
                              connections=cfg.wrk_connections, new_connection=new_connection)
                return {key: got.requests_per_second, f"{key}_errors": float(got.errors)}

            run_rounds(results, endpoints, cfg.rounds, [key, f"{key}_errors"], http, log)
        for name in endpoints:  # one errors figure for both HTTP workloads
            parts = [results.figures.get(f"{k}_errors", {}).pop(name, None)
                     for k in ("http_keepalive", "http_newconn")]
            counts = [m.value for m in parts if isinstance(m, Measurement)]
            if counts:
                results.record("http_errors", name, sum(counts), counts)
        for k in ("http_keepalive_errors", "http_newconn_errors"):
            results.figures.pop(k, None)
    else:
        for k in ("http_keepalive", "http_newconn"):
            for p in endpoints:
                results.fail(k, p, "wrk is not installed (Debian package wrk)")

    if "burst" not in cfg.workloads:
        return
    log(f"{cfg.burst_connections:,} concurrent connections")

    def burst(ep: paths.Endpoint) -> dict[str, float]:
        with procs.RssSampler(ep.processes) as rss:
            got = workloads.burst(ep.host, ep.port, cfg.burst_connections, cfg.burst_timeout)
        if got.first_error:
            note = f"1,000 concurrent: first error: {got.first_error}"
            if note not in results.paths[ep.name].notes:
                results.paths[ep.name].notes.append(note)
        out = {"burst_errors": float(got.errors), "burst_seconds": got.seconds}
        for role, peak in rss.peak.items():
            out[f"rss_{role}"] = peak / MB
        return out

    keys = ["burst_errors", "burst_seconds", "rss_client", "rss_server"]
    run_rounds(results, endpoints, cfg.burst_rounds, keys, burst, log)


def machine() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        return "unknown"

    import asyncssh

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "openssh": version(["ssh", "-V"]),
        "wrk": version(["wrk", "--version"]),
    }


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every ``finally`` stops what it started."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _start_slot(stack: contextlib.ExitStack, name: str,
                factory: Callable[[], AbstractContextManager[paths.Endpoint]], restartable: bool,
                results: Results, log: Callable[[str], None]) -> Slot | None:
    try:
        slot = Slot(name, factory, restartable)
    except Exception as exc:  # noqa: BLE001 - a path that cannot start is reported, not fatal
        reason = f"{type(exc).__name__}: {exc}"
        log(f"  {name}: not available: {reason}")
        results.paths[name] = PathInfo(False, reason)
        return None
    stack.callback(slot.close)
    results.paths[name] = PathInfo(True, notes=list(slot.ep.notes))
    return slot


def _start_path(stack: contextlib.ExitStack, name: str, server_port: int, workdir: Path,
                cfg: Config, results: Results, log: Callable[[str], None]) -> Slot | None:
    def factory() -> AbstractContextManager[paths.Endpoint]:
        if name == "limit":
            return paths.limit(server_port)
        if name == "openssh":
            return paths.openssh(server_port, workdir, cfg.openssh_cipher)
        if name == "tunnel":
            return paths.tunnel(server_port, workdir, cfg.tunnel_tuning)
        from . import cluster

        return cluster.swapped(workdir, cfg.swap_rounds, results, log)

    return _start_slot(stack, name, factory, name != "cluster", results, log)


def run(cfg: Config, log: Callable[[str], None] = print) -> Results:
    raise_fd_limit()
    results = Results(meta={"machine": machine(), "config": asdict(cfg)})
    started = time.monotonic()
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        stack.callback(_sweep, log)
        server = stack.enter_context(paths.workload_server())
        slots: dict[str, Slot] = {}
        for name in cfg.paths:
            log(f"setting up: {report.PATH_TITLES[name]}")
            slot = _start_path(stack, name, server.port, Path(tmp), cfg, results, log)
            if slot is not None:
                slots[name] = slot
        measure(results, slots, cfg, log)
        for name, slot in slots.items():
            if name != "limit":
                results.record("restarts", name, float(slot.restarts))
        log("tearing down")
    results.meta["seconds"] = round(time.monotonic() - started, 1)
    return results


def _sweep(log: Callable[[str], None]) -> None:
    left = procs.stop_all()
    if left:
        log(f"stopped processes the teardown missed: {', '.join(left)}")


def setting_label(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "bridge defaults"


TUNING_FIGURES = ("upload", "download", "upload_cpu", "download_cpu", "rtt_p50", "connect_p50")


def run_tuning(cfg: Config, settings: Sequence[dict[str, Any]],
               log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One loopback tunnel per setting, all up at once and measured round-robin (so drift on
    a shared machine hits every setting alike), with OpenSSH as the yardstick: bulk, round
    trip and new-connection figures, median of ``cfg.rounds``."""
    raise_fd_limit()
    results = Results()
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        stack.callback(_sweep, log)
        server = stack.enter_context(paths.workload_server())
        slots: dict[str, Slot] = {}
        log("setting up: OpenSSH ssh -R")
        ssh = _start_path(stack, "openssh", server.port, Path(tmp), cfg, results, log)
        if ssh is not None:
            slots["openssh"] = ssh
        for setting in settings:
            label = setting_label(setting)
            log(f"setting up: tunnel with {label}")
            factory = functools.partial(paths.tunnel, server.port, Path(tmp), dict(setting))
            slot = _start_slot(stack, label, factory, True, results, log)
            if slot is not None:
                slots[label] = slot
        measure(results, slots, replace(cfg, workloads=("bulk", "rtt", "connect")), log)
        log("tearing down")
    rows: list[dict[str, Any]] = []
    for name, info in results.paths.items():
        row: dict[str, Any] = {"setting": "OpenSSH ssh -R" if name == "openssh" else name}
        if not info.available:
            row["error"] = info.reason
        for k in TUNING_FIGURES:
            m = results.figures.get(k, {}).get(name)
            row[k] = m.value if isinstance(m, Measurement) else m
            if isinstance(m, Measurement):
                row[f"{k}_rounds"] = m.rounds
        row["notes"] = info.notes
        rows.append(row)
    return rows


def main_exit_code(results: Results) -> int:
    return 0 if any(i.available for i in results.paths.values()) else 1
