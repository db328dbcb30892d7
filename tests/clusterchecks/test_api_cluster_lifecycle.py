"""`scripts/test-cluster`: it serves, stops cleanly on SIGTERM/SIGINT leaving nothing behind,
and a new run removes what a killed one left."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from typing import Any

import pytest
from kubernetes import client, config

pytestmark = pytest.mark.cluster


def _netns(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def _links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]


def _pids_in(netns: list[str]) -> set[int]:
    pids: set[int] = set()
    for ns in netns:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        pids |= {int(p) for p in out.split()}
    return pids


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent, init, to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _index_in_use(index: int) -> bool:
    """Whether a live instance (maybe another test session's, started meanwhile) holds the
    lock of instance `index`; names derived from the index are then legitimately in use."""
    path = f"/run/bridge-test-cluster/btc{index}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _run_a_pod(kubeconfig: str, wait_until: Any) -> None:
    with config.new_client_from_config(config_file=kubeconfig) as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_pod("default", client.V1Pod(
            metadata=client.V1ObjectMeta(name="sleeper"),
            spec=client.V1PodSpec(containers=[client.V1Container(
                name="c", image="x", command=["sleep", "600"])])))
        wait_until(lambda: core.read_namespaced_pod("sleeper", "default").status.phase
                   == "Running", 30, "the pod to run")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_leaves_nothing_behind(cluster_factory: Any, wait_until: Any, sig: int) -> None:
    running = cluster_factory()
    assert running.index >= 0
    prefix = f"btc{running.index}"
    _run_a_pod(running.kubeconfig, wait_until)
    namespaces = _netns(prefix + "-")
    assert namespaces, "the pod should have its own network namespace"
    assert f"{prefix}br" in _links(prefix)
    pids = _pids_in(namespaces)
    assert pids
    running.process.send_signal(sig)
    assert running.process.wait(timeout=60) == 0
    assert any("stopped" in line for line in running.output)
    assert not set(namespaces) & set(_netns(prefix + "-"))
    assert not [pid for pid in pids if _alive(pid)]
    if not _index_in_use(running.index):
        assert _links(prefix) == []
        assert not os.path.exists(f"/run/bridge-test-cluster/{prefix}")


def test_new_run_cleans_what_a_killed_one_left(cluster_factory: Any, wait_until: Any) -> None:
    first = cluster_factory()
    prefix = f"btc{first.index}"
    _run_a_pod(first.kubeconfig, wait_until)
    namespaces = _netns(prefix + "-")
    pids = _pids_in(namespaces)
    first.process.kill()  # no chance to clean up
    first.process.wait(timeout=30)
    assert _netns(prefix + "-"), "a killed run leaves its network namespaces"
    second = cluster_factory()
    try:
        assert not set(namespaces) & set(_netns(prefix + "-"))
        wait_until(lambda: not [pid for pid in pids if _alive(pid)], 10,
                   "the killed run's pod processes to be gone")
        if second.index != first.index and not _index_in_use(first.index):
            assert _links(prefix) == []
    finally:
        second.stop()
    assert _netns(f"btc{second.index}-") == []


def test_unwritable_kubeconfig_path_is_refused_before_starting(tmp_path: Any) -> None:
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "scripts" / "test-cluster"
    target = tmp_path / "missing-dir" / "kubeconfig"
    result = subprocess.run([sys.executable, str(script), "--kubeconfig", str(target)],
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"test-cluster: cannot write the kubeconfig: directory {target.parent} does not "
        "exist; nothing was started")
    assert not target.parent.exists()
