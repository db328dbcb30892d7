"""Nothing is left behind: `scripts/test-cluster` stopped with SIGTERM removes every process,
network namespace, link and state file it made; one killed with SIGKILL leaves them, and the
next start removes them. Each test runs its own cluster (not the shared session one), drives it
with kubectl only, and looks at the machine with `ip` and /proc."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.equipment.clients import Kubectl
from tests.equipment.localcluster.fixture import ClusterProcess, start_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

STATE_ROOT = Path(os.environ.get("BRIDGE_TEST_CLUSTER_STATE", "/run/bridge-test-cluster"))
NETNS_DIR = Path("/run/netns")

WORKLOAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: stubborn}
spec:
  replicas: 2
  selector: {matchLabels: {app: stubborn}}
  template:
    metadata: {labels: {app: stubborn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        # ignores SIGTERM and starts a child of its own: only a group/netns kill ends it
        command: ["sh", "-c", "trap '' TERM; sleep 1000 & while true; do sleep 1; done"]
---
apiVersion: v1
kind: Service
metadata: {name: stubborn}
spec:
  selector: {app: stubborn}
  ports: [{port: 80, targetPort: 8080}]
"""


def made_by(index: int) -> list[str]:
    """Network namespaces, links and state files of instance `index` that exist now."""
    prefix = f"btc{index}"
    found = [f"netns {p.name}" for p in (NETNS_DIR.iterdir() if NETNS_DIR.is_dir() else [])
             if p.name.startswith(prefix + "-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == prefix + "br" or name.startswith(prefix + "v"):
            found.append(f"link {name}")
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    found += [f"address {line.split()[3]}" for line in addrs.splitlines()
              if f" 10.96.{index}." in line or f" 10.244.{index}." in line]
    found += [f"state {p}" for p in (STATE_ROOT / prefix, STATE_ROOT / f"{prefix}.lock")
              if p.exists()]
    return found


def pod_processes(index: int) -> set[int]:
    """Processes living in one of instance `index`'s pod network namespaces."""
    inodes = set()
    for ns in NETNS_DIR.iterdir() if NETNS_DIR.is_dir() else []:
        if ns.name.startswith(f"btc{index}-"):
            inodes.add(os.stat(ns).st_ino)
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino in inodes:
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_with_workload(path: Path) -> tuple[ClusterProcess, set[int]]:
    running = start_cluster(path)
    kubectl = Kubectl(running.kubeconfig)
    kubectl("apply", "-f", "-", input=WORKLOAD)
    kubectl("wait", "--for=condition=Ready", "pod", "-l", "app=stubborn", "--timeout=30s")
    assert running.index >= 0, running.output
    deadline = time.monotonic() + 30
    pids = pod_processes(running.index)
    while len(pids) < 4:  # two pods, each a shell and its background sleep
        assert time.monotonic() < deadline, pids
        time.sleep(0.1)
        pids = pod_processes(running.index)
    return running, pids


def test_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    running, pids = start_with_workload(tmp_path / "kubeconfig")
    index = running.index
    assert any(x.startswith("netns") for x in made_by(index))
    assert f"link btc{index}br" in made_by(index)
    assert running.stop() == 0
    assert made_by(index) == []
    assert [pid for pid in pids if alive(pid)] == []


def test_killed_cluster_is_cleaned_by_the_next_start(tmp_path: Path) -> None:
    running, pids = start_with_workload(tmp_path / "first")
    index = running.index
    old_netns = {p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"btc{index}-")}
    running.process.kill()
    running.process.wait(timeout=10)
    assert any(alive(pid) for pid in pids), "pod processes should outlive a SIGKILLed cluster"
    assert made_by(index), "a SIGKILLed cluster cannot clean up after itself"
    second = start_cluster(tmp_path / "second")
    try:
        assert [pid for pid in pids if alive(pid)] == []
        assert old_netns.isdisjoint(p.name for p in NETNS_DIR.iterdir())
        if second.index != index:
            assert made_by(index) == []
    finally:
        assert second.stop() == 0
    assert made_by(second.index) == []
    assert made_by(index) == []
