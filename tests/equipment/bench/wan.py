"""The WAN section of the benchmark: the laptop's link to the API server emulated by Toxiproxy.

One local test cluster; Toxiproxy between the agent and its API server, with a kubeconfig
pointing through it (same CA; ``tls-server-name`` kept when the address changes). Everything the
agent does — API calls, the port-forward websocket, so every tunneled byte — crosses the link.
For each link shape:

- **bridge**: ``bridge swap bench --port P -- <workload server>`` through the link; the clients
  reach the laptop's child through the Service's ClusterIP (cluster -> proxy pod -> sidecar ->
  port-forward over the link -> agent -> child);
- **reference**: a plain TCP relay over the same link: ``kubectl port-forward`` (through the same
  kubeconfig) to a second Deployment running the same workload server, the clients on the laptop.

Figures: keep-alive HTTP request and new connection + first byte (p50/p99, in RTTs), bulk in each
direction of the link (fraction of its bandwidth), swap start -> first request served and restore
(seconds and RTTs). Directions are named by the link: "to laptop" is cluster -> laptop.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from . import cluster, procs, toxiproxy, workloads
from .report import percentile
from .toxiproxy import Shape

SHAPES = (Shape("20 ms / 100 Mbit/s", 20, 100e6), Shape("80 ms / 20 Mbit/s", 80, 20e6))
REF = "benchref"
PF_TIMEOUT = 60.0


@dataclass(frozen=True)
class WanConfig:
    shapes: tuple[Shape, ...] = SHAPES
    keepalive_count: int = 150
    keepalive_rtts: float = 150  # time budget per sample set, in RTTs (bounds the 80 ms case)
    connect_count: int = 60
    connect_rtts: float = 150
    bulk_seconds: float = 3.0  # each bulk transfer is sized to take about this long
    bulk_calibrate_bytes: int = 1024 * 1024
    swap_rounds: int = 3


QUICK = WanConfig(keepalive_count=20, keepalive_rtts=40, connect_count=10, connect_rtts=40,
                  bulk_seconds=1.0, swap_rounds=1)


# ---------------------------------------------------------------------------- kubeconfig


def linked_kubeconfig(config: dict[str, Any], port: int) -> dict[str, Any]:
    """The same kubeconfig with every cluster's server moved to ``127.0.0.1:port`` (the link);
    a server that was not already 127.0.0.1 keeps its name for TLS (``tls-server-name``)."""
    out = copy.deepcopy(config)
    for entry in out.get("clusters") or []:
        c = entry["cluster"]
        host = urlsplit(c["server"]).hostname or ""
        c["server"] = f"https://127.0.0.1:{port}"
        if host not in ("127.0.0.1", "") and "tls-server-name" not in c:
            c["tls-server-name"] = host
    return out


def api_upstream(config: dict[str, Any]) -> str:
    """host:port of the (only) cluster's API server."""
    clusters = config.get("clusters") or []
    if len(clusters) != 1:
        raise RuntimeError(f"expected one cluster in the kubeconfig, found {len(clusters)}")
    u = urlsplit(clusters[0]["cluster"]["server"])
    return f"{u.hostname}:{u.port or 443}"


# ---------------------------------------------------------------------------- workloads


def keepalive_requests(host: str, port: int, count: int, budget: float, body: bytes,
                       timeout: float = 30.0) -> list[float]:
    """Seconds per HTTP request on one keep-alive connection (after one warm-up request);
    every reply must carry ``body`` (so the figure is of the path meant, not another pod)."""
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    samples: list[float] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = sock.makefile("rb")

        def one() -> None:
            sock.sendall(req)
            length = -1
            status = f.readline()
            if not status.startswith(b"HTTP/1.1 200 "):
                raise workloads.WorkloadError(f"bad HTTP reply {status[:40]!r}")
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            got = f.read(length) if length >= 0 else b""
            if got != body:
                raise workloads.WorkloadError(f"HTTP body {got[:40]!r}, expected {body!r}")

        one()
        deadline = time.perf_counter() + budget
        while len(samples) < count and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            one()
            samples.append(time.perf_counter() - t0)
    return samples


def bulk_rate(transfer: Callable[..., float], host: str, port: int, cfg: WanConfig,
              shape: Shape) -> float:
    """Bytes/s of a transfer sized (from a calibration transfer) to last ``bulk_seconds``."""
    secs = transfer(host, port, cfg.bulk_calibrate_bytes, timeout=120.0)
    rate = cfg.bulk_calibrate_bytes / secs
    n = int(min(rate, shape.bandwidth_bps / 8) * cfg.bulk_seconds)
    n = max(n, cfg.bulk_calibrate_bytes)
    return n / transfer(host, port, n, timeout=120.0)


@dataclass
class Side:
    """Figures of one path (bridge or reference) on one link shape, raw units."""

    keepalive: list[float] = field(default_factory=list)
    connect: list[float] = field(default_factory=list)
    to_laptop: float | None = None  # bytes/s
    from_laptop: float | None = None
    swap_start: list[float] = field(default_factory=list)
    restore: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # per swap round: (phase, seconds, API requests, serial ones) from bridge's stamped log
    profiles: list[list[tuple[str, float, int, int | None]]] = field(default_factory=list)


def measure(side: Side, host: str, port: int, shape: Shape, cfg: WanConfig,
            client_on_laptop: bool, body: bytes, log: Callable[[str], None]) -> None:
    steps: list[tuple[str, Callable[[], None]]] = []

    def ka() -> None:
        side.keepalive = keepalive_requests(host, port, cfg.keepalive_count,
                                            cfg.keepalive_rtts * shape.rtt_s, body)

    def cn() -> None:
        side.connect = workloads.connect_first_byte(host, port, cfg.connect_count,
                                                    cfg.connect_rtts * shape.rtt_s)

    def up() -> None:  # client -> server
        rate = bulk_rate(workloads.bulk_upload, host, port, cfg, shape)
        if client_on_laptop:
            side.from_laptop = rate
        else:
            side.to_laptop = rate

    def down() -> None:  # server -> client
        rate = bulk_rate(workloads.bulk_download, host, port, cfg, shape)
        if client_on_laptop:
            side.to_laptop = rate
        else:
            side.from_laptop = rate

    steps = [("keep-alive", ka), ("connect", cn), ("bulk up", up), ("bulk down", down)]
    for name, fn in steps:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one workload failing is reported, not fatal
            side.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log(f"    {name} failed: {exc}")


# ---------------------------------------------------------------------------- set-up


def deploy(c: cluster.TestCluster, name: str, port: int) -> None:
    c.kubectl("apply", "-f", "-", input=cluster.manifest(port, name))
    c.kubectl("rollout", "status", f"deployment/{name}", "--timeout=60s", timeout=90)


@contextlib.contextmanager
def port_forward(kubeconfig: Path, target: str, remote: int) -> Iterator[int]:
    """``kubectl port-forward`` to ``target``; the local port, once it relays."""
    local = procs.free_port()
    pf = procs.Proc("kubectl port-forward",
                    [cluster.kubectl_path(), "--kubeconfig", str(kubeconfig), "port-forward",
                     target, f"{local}:{remote}"], env=procs.python_env())
    with procs.running(pf):
        pf.wait_line(lambda s: s.startswith("Forwarding from"), PF_TIMEOUT)
        procs.wait_port("127.0.0.1", local, PF_TIMEOUT, probe=b"P", expect=b"p")
        yield local


@dataclass
class ShapeResult:
    shape: Shape
    bridge: Side
    reference: Side


def run(cfg: WanConfig, log: Callable[[str], None]) -> list[ShapeResult]:
    out: list[ShapeResult] = []
    with tempfile.TemporaryDirectory(prefix="bridge-wan-") as tmp, \
            toxiproxy.running(log) as tp:
        c = cluster.TestCluster(Path(tmp))
        with procs.running(c.proc):
            c.wait_ready()
            config = yaml.safe_load(c.kubeconfig.read_text())
            link = tp.link("apiserver", api_upstream(config))
            linked = Path(tmp) / "kubeconfig-wan"
            linked.write_text(yaml.safe_dump(linked_kubeconfig(config, link.port)))
            linked.chmod(0o600)
            port, ref_port = procs.free_port(), procs.free_port()
            deploy(c, cluster.NAME, port)
            deploy(c, REF, ref_port)
            ip = c.kubectl("get", "service", cluster.NAME, "-o",
                           "jsonpath={.spec.clusterIP}").strip()
            cluster.wait_body(ip, port, cluster.ORIGINAL_BODY, cluster.READY_TIMEOUT)
            view = _Kube(linked)
            for shape in cfg.shapes:
                log(f"WAN {shape.name}")
                link.set_shape(shape)
                res = ShapeResult(shape, Side(), Side())
                out.append(res)
                log("  reference: kubectl port-forward over the link")
                try:
                    with port_forward(linked, f"deployment/{REF}", ref_port) as local:
                        measure(res.reference, "127.0.0.1", local, shape, cfg, True,
                                cluster.ORIGINAL_BODY, log)
                except Exception as exc:  # noqa: BLE001 - reported
                    res.reference.errors.append(f"port-forward: {type(exc).__name__}: {exc}")
                log("  bridge swap over the link")
                _bridge(res.bridge, view, c, ip, port, shape, cfg, log)
            link.set_shape(None)
    return out


@dataclass
class _Kube:
    kubeconfig: Path


def swapped_fully(c: cluster.TestCluster, ip: str, port: int) -> None:
    """Wait until the original has no pod left and the Service answers only the child (the
    first child answer comes while the original still serves, before it is scaled down)."""
    def no_original_pods() -> bool:
        out = c.kubectl("get", "deployment", cluster.NAME, "-o",
                        "jsonpath={.spec.replicas} {.status.replicas}").split()
        return out[:1] == ["0"] and out[1:] in ([], ["0"])

    deadline = time.monotonic() + cluster.SWAP_TIMEOUT
    while not no_original_pods():
        if time.monotonic() > deadline:
            raise RuntimeError("the original was not scaled to zero after the swap")
        time.sleep(0.2)
    for _ in range(10):
        cluster.wait_body(ip, port, cluster.CHILD_BODY, cluster.SWAP_TIMEOUT)


def _bridge(side: Side, view: _Kube, c: cluster.TestCluster, ip: str, port: int,
            shape: Shape, cfg: WanConfig, log: Callable[[str], None]) -> None:
    swap: cluster.Swap | None = None
    logs: list[tuple[Path, float]] = []  # each swap's log file and start (read once restored)
    try:
        for n in range(max(1, cfg.swap_rounds)):
            log_file = view.kubeconfig.parent / f"swap-{shape.rtt_ms:g}ms-{n}.log"
            swap = cluster.Swap(view, port, log_file)  # type: ignore[arg-type]
            served = cluster.wait_body(ip, port, cluster.CHILD_BODY, cluster.SWAP_TIMEOUT * 3,
                                       swap.proc.alive)
            side.swap_start.append(served - swap.start)
            log(f"    swap {n + 1}: first request served after {side.swap_start[-1]:.2f}s")
            logs.append((log_file, swap.started_at))
            if n < cfg.swap_rounds - 1:
                side.restore.append(swap.restore(ip, port))
                log(f"    swap {n + 1}: restored in {side.restore[-1]:.2f}s")
                swap = None
        assert swap is not None
        swapped_fully(c, ip, port)
        measure(side, ip, port, shape, cfg, False, cluster.CHILD_BODY, log)
        side.restore.append(swap.restore(ip, port))
        log(f"    restored in {side.restore[-1]:.2f}s")
        swap = None
    except Exception as exc:  # noqa: BLE001 - reported
        side.errors.append(f"swap: {type(exc).__name__}: {exc}")
        log(f"    swap failed: {exc}")
    finally:
        if swap is not None:
            with contextlib.suppress(Exception):
                swap.proc.popen.send_signal(signal.SIGINT)
                swap.proc.popen.wait(timeout=cluster.RESTORE_TIMEOUT)
            swap.proc.stop()
        for n, (path, started_at) in enumerate(logs, 1):
            with contextlib.suppress(OSError):
                side.profiles.append(profile(path.read_text(), started_at))
                log(f"    swap {n}: {profile_line(side.profiles[-1])}")


# ---------------------------------------------------------------------------- report


PROFILE_LINE = re.compile(
    r"^(\S+) profile: (\S+) done; (\d+) API requests so far(?: \((\d+) serial\))?$")


def profile(log_text: str, started_at: float) -> list[tuple[str, float, int, int | None]]:
    """One swap's set-up phase by phase, from bridge's log file (`--log-file` stamps every
    line; the session writes `profile: PHASE done; N API requests so far` after each phase):
    (phase, seconds, API requests, serial ones: sent while no other was waiting for its answer,
    None from a bridge that did not say) each. The first phase counts from the process's
    start (time.time() `started_at`), so it holds the CLI's own start-up."""
    rows: list[tuple[str, float, int, int | None]] = []
    at, sent, serial = started_at, 0, 0
    for line in log_text.splitlines():
        m = PROFILE_LINE.match(line.strip())
        if not m:
            continue
        when = dt.datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.UTC).timestamp()
        now_serial = int(m[4]) if m[4] is not None else None
        rows.append((m[2], when - at, int(m[3]) - sent,
                     None if now_serial is None else now_serial - serial))
        at, sent, serial = when, int(m[3]), now_serial or 0
    return rows


def profile_line(rows: list[tuple[str, float, int, int | None]]) -> str:
    if not rows:
        return "no profile (bridge wrote no `profile:` lines)"
    return "profile: " + ", ".join(
        f"{phase} {secs:.2f}s/{n} req" + ("" if serial is None else f"/{serial} serial")
        for phase, secs, n, serial in rows)


def _rtts(xs: list[float], p: float, shape: Shape) -> float | None:
    return percentile(xs, p) / shape.rtt_s if xs else None


def _frac(rate: float | None, shape: Shape) -> float | None:
    return rate * 8 / shape.bandwidth_bps if rate else None


def figures(r: ShapeResult) -> list[tuple[str, str, float | None, float | None, str]]:
    """Rows: (label, unit, bridge, reference, physical limit)."""
    s, b, ref = r.shape, r.bridge, r.reference
    rows: list[tuple[str, str, float | None, float | None, str]] = [
        ("keep-alive request p50", "RTT", _rtts(b.keepalive, 50, s), _rtts(ref.keepalive, 50, s),
         ">= 1 RTT"),
        ("keep-alive request p99", "RTT", _rtts(b.keepalive, 99, s), _rtts(ref.keepalive, 99, s),
         ">= 1 RTT"),
        ("new connection + first byte p50", "RTT", _rtts(b.connect, 50, s),
         _rtts(ref.connect, 50, s), ">= 1 RTT (2 with an SSH channel open)"),
        ("new connection + first byte p99", "RTT", _rtts(b.connect, 99, s),
         _rtts(ref.connect, 99, s), ">= 1 RTT (2 with an SSH channel open)"),
        ("bulk to laptop", "x link", _frac(b.to_laptop, s), _frac(ref.to_laptop, s),
         "<= 1.0 (less TLS/ws/SSH framing)"),
        ("bulk from laptop", "x link", _frac(b.from_laptop, s), _frac(ref.from_laptop, s),
         "<= 1.0 (less TLS/ws/SSH framing)"),
    ]
    if b.swap_start:
        med = statistics.median(b.swap_start)
        rows.append(("swap start -> first request", "s", med, None, "a few RTTs + pod start"))
        rows.append(("swap start -> first request", "RTT", med / s.rtt_s, None, ""))
    if b.restore:
        med = statistics.median(b.restore)
        rows.append(("restore (Ctrl-C -> original answers)", "s", med, None,
                     ">= 1 RTT + original Ready"))
        rows.append(("restore (Ctrl-C -> original answers)", "RTT", med / s.rtt_s, None, ""))
    return rows


def _f(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if abs(x) < 100 else f"{x:.0f}"


def text(results: list[ShapeResult]) -> str:
    lines = ["WAN: the agent's link to the API server through Toxiproxy (latency each way = "
             "RTT/2, bandwidth each way);",
             "reference = the same workloads through `kubectl port-forward` over the same link "
             "(plain TCP relay to a pod)."]
    for r in results:
        s = r.shape
        lines.append("")
        lines.append(f"link {s.name}  (RTT {s.rtt_ms:g} ms, BDP {s.bdp_bytes / 1024:.0f} KiB;"
                     f" samples: keep-alive {len(r.bridge.keepalive)}/"
                     f"{len(r.reference.keepalive)}, connect {len(r.bridge.connect)}/"
                     f"{len(r.reference.connect)})")
        lines.append(f"  {'figure':38} {'unit':7} {'bridge':>8} {'reference':>10} "
                     f"{'bridge/ref':>10}  limit")
        for label, unit, b, ref, limit in figures(r):
            ratio = _f(b / ref) if b is not None and ref else "-"
            lines.append(f"  {label:38} {unit:7} {_f(b):>8} {_f(ref):>10} {ratio:>10}  {limit}")
        for who, side in (("bridge", r.bridge), ("reference", r.reference)):
            for e in side.errors:
                lines.append(f"  {who} error: {e}")
        if len(r.bridge.swap_start) > 1 or len(r.bridge.restore) > 1:
            lines.append("  swap rounds (s): start " + ", ".join(f"{x:.2f}" for x in
                         r.bridge.swap_start) + "; restore " + ", ".join(
                         f"{x:.2f}" for x in r.bridge.restore))
        for n, rows in enumerate(r.bridge.profiles, 1):
            lines.append(f"  swap {n} {profile_line(rows)}")
    slope = serial_rtts(results)
    if slope is not None:
        lines.append("")
        lines.append(f"swap set-up: {slope:.1f} serial round trips (slope of start time over "
                     "RTT between the two links)")
    return "\n".join(lines)


def serial_rtts(results: list[ShapeResult]) -> float | None:
    pts = [(r.shape.rtt_s, min(r.bridge.swap_start)) for r in results if r.bridge.swap_start]
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    return (y1 - y0) / (x1 - x0)


def to_json(results: list[ShapeResult]) -> list[dict[str, Any]]:
    return [{"shape": {"name": r.shape.name, "rtt_ms": r.shape.rtt_ms,
                       "bandwidth_bps": r.shape.bandwidth_bps},
             "figures": [dict(zip(("label", "unit", "bridge", "reference", "limit"), row,
                                  strict=True)) for row in figures(r)],
             "bridge_raw": vars(r.bridge), "reference_raw": vars(r.reference)}
            for r in results]


def main(argv: list[str]) -> int:  # pragma: no cover - a debugging entry point
    quick = "--quick" in argv
    res = run(QUICK if quick else WanConfig(), lambda m: print(m, file=sys.stderr, flush=True))
    print(text(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(subprocess.SubprocessError):
        sys.exit(main(sys.argv[1:]))
    sys.exit(1)
