"""Outbound benchmark (issue 10): new connection + first byte, and bulk download, from a
swapped command under torsocks (`bridge swap --outbound inject`) to another Service's
ClusterIP, side by side with the same workloads run directly from the host to that ClusterIP
(the test cluster's ClusterIPs are reachable from the host), in one run. Ratios, not times.

    sudo .venv/bin/python -m tests.equipment.bench.outbound [--connects N] [--bulk-mb M]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from . import procs, workloads
from .cluster import NAME, ORIGINAL_BODY, TestCluster, bridge_argv, manifest, wait_body
from .report import median

CALLER = "caller"


def measure(host: str, port: int, connects: int, bulk_bytes: int) -> dict[str, object]:
    first = workloads.connect_first_byte(host, port, connects, budget=30.0)
    bulk = [workloads.bulk_download(host, port, bulk_bytes) for _ in range(3)]
    return {"connect_first_byte_s": median(first), "samples": len(first),
            "bulk_mb_per_s": bulk_bytes / median(bulk) / 1e6}


def client_main(args: argparse.Namespace) -> int:
    """In the swapped command (under torsocks): measure, write JSON, exit."""
    out = measure(args.host, args.port, args.connects, args.bulk_mb * 1_000_000)
    Path(args.out).write_text(json.dumps(out))
    return 0


def bench_main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bridge-bench-outbound-") as tmp:
        work = Path(tmp)
        cluster = TestCluster(work)
        with procs.running(cluster.proc):
            cluster.wait_ready()
            port = procs.free_port()
            cluster.kubectl("apply", "-f", "-", input=manifest(port))
            cluster.kubectl("apply", "-f", "-", input=manifest(port).replace(
                f" {NAME}", f" {CALLER}").replace(f"{{app: {NAME}}}", f"{{app: {CALLER}}}"))
            for name in (NAME, CALLER):
                cluster.kubectl("rollout", "status", f"deployment/{name}", "--timeout=60s",
                                timeout=90)
            ip = cluster.kubectl("get", "service", NAME, "-o",
                                 "jsonpath={.spec.clusterIP}").strip()
            if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip):
                raise RuntimeError(f"unexpected ClusterIP {ip!r}")
            wait_body(ip, port, ORIGINAL_BODY, 60)
            direct = measure(ip, port, args.connects, args.bulk_mb * 1_000_000)
            out = work / "through.json"
            swap = procs.Proc("bridge swap", [
                *bridge_argv(), "--kubeconfig", str(cluster.kubeconfig), "swap", CALLER,
                "--outbound", "inject", "--timeout", "60", "--",
                sys.executable, "-m", "tests.equipment.bench.outbound", "--client", "--host", ip,
                "--port", str(port), "--out", str(out), "--connects", str(args.connects),
                "--bulk-mb", str(args.bulk_mb)], cwd=str(Path(__file__).parents[3]),
                env=procs.python_env({"CI": "true"}))
            code = swap.popen.wait(timeout=600)
            if code != 0 or not out.exists():
                raise RuntimeError(f"bridge swap exited {code}: {swap.tail()}")
            through = json.loads(out.read_text())
    rows = [("new connection + first byte (median s)", "connect_first_byte_s"),
            ("bulk download (MB/s)", "bulk_mb_per_s")]
    print(f"{'':40} {'direct':>10} {'bridge':>10} {'ratio':>8}")
    for label, key in rows:
        d, b = float(direct[key]), float(through[key])  # type: ignore[arg-type]
        print(f"{label:40} {d:10.4f} {b:10.4f} {b / d:8.2f}")
    print(json.dumps({"direct": direct, "bridge_inject": through}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.equipment.bench.outbound")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--out")
    p.add_argument("--connects", type=int, default=200)
    p.add_argument("--bulk-mb", type=int, default=64)
    args = p.parse_args(argv)
    return client_main(args) if args.client else bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
