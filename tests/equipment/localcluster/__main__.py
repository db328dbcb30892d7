"""`python -m tests.equipment.localcluster --kubeconfig PATH [--sidecar-image IMG]`: run a local
test cluster in the foreground until SIGINT or SIGTERM (see scripts/test-cluster)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from .cluster import Cluster


async def run(kubeconfig: Path, sidecar_image: str | None) -> int:
    cluster = Cluster(kubeconfig, sidecar_image)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await cluster.start()
        assert cluster.config is not None
        print(f"test cluster ready: index={cluster.config.index} server={cluster.server} "
              f"kubeconfig={kubeconfig}", flush=True)
        await stop.wait()
        print("test cluster stopping", flush=True)
        return 0
    finally:
        await cluster.stop()
        print("test cluster stopped", flush=True)


def preflight(kubeconfig: Path) -> str | None:
    """What would stop the cluster from starting, found before anything is changed."""
    if os.geteuid() != 0:
        return "needs root (it creates network namespaces, veth pairs and a bridge)"
    parent = kubeconfig.resolve().parent
    if not parent.is_dir():
        return f"cannot write the kubeconfig: directory {parent} does not exist"
    if not os.access(parent, os.W_OK):
        return f"cannot write the kubeconfig: directory {parent} is not writable"
    if kubeconfig.is_dir():
        return f"cannot write the kubeconfig: {kubeconfig} is a directory"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="test-cluster",
                                     description="Run bridge's local Kubernetes test cluster.")
    parser.add_argument("--kubeconfig", required=True, type=Path,
                        help="where to write the kubeconfig once the cluster serves")
    parser.add_argument("--sidecar-image", default=None,
                        help="image name the node runs as the checkout's sidecar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    problem = preflight(args.kubeconfig)
    if problem:
        print(f"test-cluster: {problem}; nothing was started", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        return asyncio.run(run(args.kubeconfig.resolve(), args.sidecar_image))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - one line for the person who ran it
        print(f"test-cluster: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
