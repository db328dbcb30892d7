"""Points 6 and 7 (the node's part) through real clients: HTTP through a Service's ClusterIP
from the host and from a pod, balanced over Ready endpoints only; a deleted pod leaves the
Endpoints before it is signalled; `kubernetes.stream.portforward` reaches a server that listens
on localhost inside the pod only."""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.clusterchecks.support import (
    HOSTNAME_SERVER,
    WAIT,
    get,
    port_forward,
    scratch_namespace,
    service,
    wait_for,
    web_deployment,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture
def ns(api_client: Any) -> Iterator[str]:
    with scratch_namespace(api_client, "svc") as name:
        yield name


def ready_ips(core: client.CoreV1Api, ns: str, name: str) -> set[str]:
    ep = core.read_namespaced_endpoints(name, ns)
    return {a.ip for s in ep.subsets or [] for a in s.addresses or []}


def test_cluster_ip_balances_over_ready_pods(api_client: Any, kubectl: Any, ns: str) -> None:
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(ns, web_deployment("hello", 2))
    core.create_namespaced_service(ns, service("hello", "http"))  # named targetPort
    # A third pod the Service selects that never turns Ready: it must get no traffic.
    core.create_namespaced_pod(ns, {
        "metadata": {"name": "unready", "labels": {"app": "hello"}},
        "spec": {"containers": [{"name": "web", "image": "python:3.12",
                                 "command": ["python3", "-c", HOSTNAME_SERVER],
                                 "ports": [{"name": "http", "containerPort": 8080}],
                                 "readinessProbe": {"exec": {"command": ["false"]},
                                                    "periodSeconds": 1}}]}})
    kubectl("wait", "-n", ns, "--for=condition=Available", "deployment/hello", "--timeout=30s")
    pods = core.list_namespaced_pod(ns, label_selector="app=hello").items
    ready = {p.metadata.name for p in pods if p.metadata.name != "unready"}
    assert len(ready) == 2
    wait_for("both replicas in the endpoints", lambda: len(ready_ips(core, ns, "hello")) == 2)
    cluster_ip = core.read_namespaced_service("hello", ns).spec.cluster_ip
    url = f"http://{cluster_ip}/"
    seen: set[str] = set()
    deadline = time.monotonic() + WAIT
    while seen != ready:
        assert time.monotonic() < deadline, seen
        answer = get(url)
        if answer is not None:
            seen.add(answer)
    answers = {get(url) for _ in range(10)}
    assert answers <= ready, answers  # never the unready pod

    # From inside a pod, through the service-link variables Kubernetes gives it.
    fetch = ("import sys,urllib.request;"
             "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
    core.create_namespaced_pod(ns, {
        "metadata": {"name": "client"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": "python:3.12", "command": ["python3", "-c", fetch],
            "args": ["http://$(HELLO_SERVICE_HOST):$(HELLO_SERVICE_PORT)/"]}]}})
    wait_for("client finished",
             lambda: core.read_namespaced_pod("client", ns).status.phase in ("Succeeded",
                                                                             "Failed"))
    assert core.read_namespaced_pod("client", ns).status.phase == "Succeeded"
    assert core.read_namespaced_pod_log("client", ns).strip() in ready


def test_deleted_pod_leaves_endpoints_before_sigterm(api_client: Any, cluster: Any,
                                                      ns: str) -> None:
    """On SIGTERM the pod reports to a listener on the host, which then asks the API whether
    the pod's IP is still a ready endpoint: it must not be."""
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    listener = socket.create_server(("0.0.0.0", 0))
    listener.settimeout(WAIT)
    port = listener.getsockname()[1]
    on_term = textwrap.dedent(f"""
        import os, signal, socket, sys, time
        def term(*_):
            s = socket.create_connection((os.environ["HOST_IP"], {port}), timeout=5)
            s.sendall(os.environ["POD_IP"].encode()); s.close(); sys.exit(0)
        signal.signal(signal.SIGTERM, term)
    """) + HOSTNAME_SERVER
    apps.create_namespaced_deployment(ns, web_deployment(
        "leaving", 1, command=["python3", "-c", on_term],
        env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
             {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]))
    core.create_namespaced_service(ns, service("leaving", 8080))
    wait_for("an endpoint", lambda: ready_ips(core, ns, "leaving"))
    pod = core.list_namespaced_pod(ns, label_selector="app=leaving").items[0]
    # Serving means the SIGTERM handler (installed before the server starts) is in place.
    wait_for("serving", lambda: get(f"http://{pod.status.pod_ip}:8080/"))
    report: dict[str, Any] = {}

    def accept() -> None:
        conn, _ = listener.accept()
        report["endpoints"] = ready_ips(core, ns, "leaving")  # asked at SIGTERM time
        report["ip"] = conn.recv(100).decode()
        conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    core.delete_namespaced_pod(pod.metadata.name, ns)
    thread.join(WAIT)
    listener.close()
    assert report.get("ip") == pod.status.pod_ip, "the pod never got SIGTERM"
    assert pod.status.pod_ip not in report["endpoints"]


def test_portforward_dials_localhost_inside_the_pod(api_client: Any, ns: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(ns, {
        "metadata": {"name": "local"},
        "spec": {"containers": [{"name": "web", "image": "python:3.12",
                                 "command": ["python3", "-c", HOSTNAME_SERVER],
                                 "env": [{"name": "BIND", "value": "127.0.0.1"}]}]}})
    wait_for("running", lambda: core.read_namespaced_pod("local", ns).status.phase == "Running")
    pod_ip = core.read_namespaced_pod("local", ns).status.pod_ip

    def fetch() -> bytes | None:
        with port_forward(core, "local", ns, 8080) as pf:
            sock = pf.socket(8080)
            sock.settimeout(10)
            try:
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError:
                return None
            finally:
                sock.close()
        return data if data.startswith(b"HTTP/1.0 200") else None

    response = wait_for("answered through the port-forward", fetch)
    assert response.endswith(b"local")
    assert get(f"http://{pod_ip}:8080/") is None  # bound to the pod's localhost only

    with port_forward(core, "local", ns, 9999) as pf:
        error = wait_for("an error on the error channel", lambda: pf.error(9999), within=10)
    assert "9999" in error
