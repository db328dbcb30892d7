"""`python -m tests.equipment.realcluster --kubeconfig PATH`: run the real cluster in the
foreground until SIGINT or SIGTERM (see scripts/real-cluster)."""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from sidecar import protocol

from . import gobuild
from .cluster import RealCluster, StartError

LOCK = Path("/run/bridge-real-cluster.lock")
TOOLS = {
    "containerd": "containerd", "ctr": "containerd", "runc": "runc",
    "iptables": "iptables", "iptables-save": "iptables", "iptables-restore": "iptables",
    "conntrack": "conntrack", "ip": "iproute2", "debootstrap": "debootstrap",
    "buildah": "buildah", "tar": "tar", "mount": "mount",
}
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")


class Stop(Exception):
    pass


def preflight(kubeconfig: Path) -> str | None:
    """What would stop the cluster from starting, found before anything is changed."""
    if os.geteuid() != 0:
        return "needs root (containerd, network namespaces, iptables, cgroups)"
    parent = kubeconfig.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK) or kubeconfig.is_dir():
        return f"cannot write the kubeconfig {kubeconfig} (directory missing or not writable)"
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if any(not os.access(f"/usr/lib/cni/{p}", os.X_OK) for p in CNI_PLUGINS):
        missing.append("containernetworking-plugins")
    if missing:
        return (f"missing Debian packages: {' '.join(missing)} (run `make setup` as root, "
                f"or apt-get install them)")
    if gobuild.go_command() is None:
        return "`go` not found: Go 1.26+ compiles Kubernetes, etcd and CoreDNS (go.dev/dl)"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path(
            "/sys/fs/cgroup/cgroup.controllers").exists():
        return "no cgroup memory controller mounted at /sys/fs/cgroup"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem loaded (containerd's snapshotter needs it)"
    if not Path("/proc/sys/net/bridge").is_dir():
        return "the kernel's br_netfilter module is not loaded (kube-proxy needs it)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="real-cluster", description="Run a real single-node Kubernetes (upstream "
        "components compiled from their Go modules) in the foreground.")
    parser.add_argument("--kubeconfig", type=Path,
                        help="where to write the kubeconfig once the cluster is ready")
    parser.add_argument("--sidecar-image", default=protocol.DEFAULT_IMAGE,
                        help="the tag the sidecar image (built from sidecar/Dockerfile) gets")
    parser.add_argument("--build-only", action="store_true",
                        help="compile the binaries and build the images, then exit")
    args = parser.parse_args(argv)
    if args.kubeconfig is None and not args.build_only:
        parser.error("--kubeconfig is required (unless --build-only)")
    problem = preflight(args.kubeconfig or Path("/tmp/unused"))
    if problem:
        print(f"real-cluster: {problem}; nothing was started", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(f"real-cluster: {message}", flush=True)

    cluster = RealCluster((args.kubeconfig or Path("/tmp/unused")).resolve(),
                          args.sidecar_image, log)
    if args.build_only:
        try:
            cluster.build()
        except (StartError, RuntimeError) as err:
            print(f"real-cluster: {err}", file=sys.stderr)
            return 1
        log("binaries and images are built")
        return 0
    lock = open(LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        print(f"real-cluster: another real cluster is running (pid {lock.read().strip()}); "
              f"only one at a time (fixed ports and addresses); nothing was started",
              file=sys.stderr)
        return 2
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        cluster.start()
        log(f"real cluster ready: server={cluster.config.server} kubeconfig={args.kubeconfig} "
            f"version={gobuild.K8S_VERSION} (started in {cluster.started_in:.0f}s)")
        while (died := cluster.watch()) is None:
            time.sleep(1)
        print(f"real-cluster: {died}", file=sys.stderr)
        code = 1
    except Stop as sig:
        log(f"stopping ({sig})")
    except (StartError, RuntimeError, OSError) as err:
        print(f"real-cluster: {err}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
        log("real cluster stopped")
        lock.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
