"""What the real cluster must show (issue 8): one Ready node at the pinned version, CoreDNS
answering from a pod, a ClusterIP Service reachable from a pod and from the host, port-forward
through the real kubelet (kubectl and the official client), and the sidecar image built from
sidecar/Dockerfile running as its non-root user with no shell, checked from outside."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bridge.model import state
from tests.e2e.support import free_port, http_get, wait_until
from tests.equipment.clients import KUBECTL
from tests.equipment.realcluster.config import Config
from tests.equipment.realcluster.gobuild import K8S_VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def run_pod(kubectl: Any, namespace: str, name: str, code: str) -> str:
    """Run `python3 -c CODE` in a pod of the python:3.11-slim image to completion; its log."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "containers": [{
            "name": "main", "image": "python:3.11-slim", "imagePullPolicy": "IfNotPresent",
            "command": ["python3", "-c", code]}]}}
    kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(pod))
    phase = wait_until(f"pod {name} to finish", lambda: kubectl(
        "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}")
        in ("Succeeded", "Failed") and kubectl(
        "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}"))
    logs: str = kubectl("-n", namespace, "logs", name)
    assert phase == "Succeeded", logs
    return logs


def test_one_ready_node_at_the_pinned_version(kubectl: Any) -> None:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    assert len(nodes) == 1
    status = nodes[0]["status"]
    assert status["nodeInfo"]["kubeletVersion"] == K8S_VERSION
    assert status["nodeInfo"]["kubeProxyVersion"] in (K8S_VERSION, "")  # deprecated field
    assert status["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "Ready", "status": "True"}.items() <= next(
        c for c in status["conditions"] if c["type"] == "Ready").items()
    server = json.loads(kubectl("version", "-o", "json"))["serverVersion"]
    assert server["gitVersion"] == K8S_VERSION
    printed = kubectl("get", "nodes")
    assert re.search(rf"\sReady\s.*\s{re.escape(K8S_VERSION)}\s*$", printed, re.M), printed


def test_coredns_resolves_the_api_service_from_a_pod(kubectl: Any, namespace: str) -> None:
    ip = kubectl("get", "service", "kubernetes", "-n", "default", "-o",
                 "jsonpath={.spec.clusterIP}")
    out = run_pod(kubectl, namespace, "resolve", "import socket; print(socket.gethostbyname("
                  "'kubernetes.default.svc.cluster.local'))")
    assert out.strip() == ip


def test_cluster_ip_service_from_a_pod_and_from_the_host(make_workload: Any,
                                                        kubectl: Any) -> None:
    w = make_workload(replicas=1)
    ip = w.service_ip()
    assert http_get(ip, 80).startswith("cluster hello-")  # from the host
    out = run_pod(kubectl, w.namespace, "client",
                  "import urllib.request; print(urllib.request.urlopen("
                  f"'http://hello.{w.namespace}.svc.cluster.local/', timeout=10).read()"
                  ".decode(), end='')")
    assert out.startswith("cluster hello-")  # by name (CoreDNS) and ClusterIP from a pod


def _pod_of(w: Any) -> tuple[str, int]:
    pod = json.loads(w.k("get", "pods", "-l", "app=hello", "-o", "json"))["items"][0]
    return pod["metadata"]["name"], pod["spec"]["containers"][0]["ports"][0]["containerPort"]


def test_kubectl_port_forward_through_the_kubelet(make_workload: Any, tmp_path: Path) -> None:
    w = make_workload(replicas=1)
    name, port = _pod_of(w)
    local = free_port()
    proc = subprocess.Popen([KUBECTL, "--kubeconfig", w.kubeconfig, "-n", w.namespace,
                             "port-forward", f"pod/{name}", f"{local}:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert "Forwarding from 127.0.0.1" in proc.stdout.readline()
        for _ in range(3):
            assert http_get("127.0.0.1", local) == f"cluster {name} {port}\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_official_client_portforward_through_the_kubelet(make_workload: Any,
                                                         cluster: Any) -> None:
    from kubernetes import client, config
    from kubernetes.stream import portforward

    w = make_workload(replicas=1)
    name, port = _pod_of(w)
    api = config.new_client_from_config(config_file=cluster.kubeconfig)
    try:
        pf = portforward(client.CoreV1Api(api).connect_get_namespaced_pod_portforward,
                         name, w.namespace, ports=str(port))
        sock = pf.socket(port)
        sock.setblocking(True)
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        assert data.endswith(f"cluster {name} {port}\n".encode())
        assert pf.error(port) is None
    finally:
        api.close()


def _host_pid(w: Any, pod_name: str) -> int:
    """The pid (in the host's PID namespace) of the pod's first container, from containerd."""
    pod = w.get("pod", pod_name)
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    out = subprocess.run(["ctr", "--address", str(Config().containerd_socket), "-n", "k8s.io",
                          "tasks", "ls"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines()[1:]:
        task, pid, status = line.split()[:3]
        if task == container_id and status == "RUNNING":
            return int(pid)
    raise AssertionError(f"no running task {container_id} in:\n{out}")


def test_sidecar_image_runs_non_root_without_a_shell(make_workload: Any) -> None:
    """Checked from the host: the proxy container's process credentials, and its root
    filesystem (the image built from sidecar/Dockerfile) has no shell and a nologin user."""
    w = make_workload(replicas=1)
    b, _port = w.attach()
    proxy = w.assert_swapped()
    pods = json.loads(w.k("get", "pods", "-l", state.SESSION_LABEL, "-o", "json"))["items"]
    names = [p["metadata"]["name"] for p in pods
             if p["metadata"]["name"].startswith(proxy["metadata"]["name"])]
    assert len(names) == 1
    pid = _host_pid(w, names[0])
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
    gids = re.search(r"^Gid:\s+(.*)$", status, re.M)
    assert uids and set(uids.group(1).split()) == {"10001"}
    assert gids and set(gids.group(1).split()) == {"10001"}
    root = Path(f"/proc/{pid}/root")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:3] == [b"python", b"-m", b"sidecar"]
    passwd = {line.split(":")[2]: line.split(":") for line in
              (root / "etc/passwd").read_text().splitlines()}
    assert passwd["10001"][6] == "/usr/sbin/nologin"
    for shell in ("bin/sh", "bin/bash", "bin/dash", "usr/bin/sh", "usr/bin/bash",
                  "usr/bin/dash", "usr/bin/rbash"):
        assert not (root / shell).exists(), shell
    b.signal(2)
    assert b.wait() == 0


def test_swap_with_the_least_privilege_service_account(make_workload: Any) -> None:
    """bridge with only the permissions the README lists (the `bridge-test-sa` context, whose
    token an exec plugin mints): a swap serves the laptop through the Service, and restores."""
    w = make_workload(replicas=1)
    port = free_port()
    w.local_server(port)
    b = w.bridge("--context", "bridge-test-sa", "swap", "hello", "--port", f"http:{port}")
    b.wait_for("attached")
    ip = w.service_ip()
    wait_until("the Service to answer from the laptop",
               lambda: http_get(ip, 80) == f"laptop {port}\n")
    b.signal(2)
    assert b.wait() == 0, b.stderr
    assert "forbidden" not in b.stderr.lower(), b.stderr
