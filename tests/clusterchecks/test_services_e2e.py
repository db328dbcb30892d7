"""Points 6 and 7 (the node's part) through real clients: HTTP through a Service's ClusterIP
from the host and from a pod, balanced over Ready endpoints only; a deleted pod leaves the
Endpoints before it is signalled; `kubernetes.stream.portforward` reaches a server that listens
on localhost inside the pod only."""

from __future__ import annotations

import contextlib
import secrets
import socket
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

WAIT = 30.0

# Answers GET with its pod name; BIND (default 0.0.0.0) and PORT (default 8080) from env.
SERVER = textwrap.dedent("""
    import http.server, os
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ["HOSTNAME"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    addr = (os.environ.get("BIND", "0.0.0.0"), int(os.environ.get("PORT", "8080")))
    http.server.ThreadingHTTPServer(addr, H).serve_forever()
""")


@pytest.fixture
def ns(api_client: Any) -> Iterator[str]:
    name = f"svc-{secrets.token_hex(3)}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        for d in client.AppsV1Api(api_client).list_namespaced_deployment(name).items:
            client.AppsV1Api(api_client).delete_namespaced_deployment(d.metadata.name, name)
        for p in core.list_namespaced_pod(name).items:
            with contextlib.suppress(ApiException):  # its controller may have removed it
                core.delete_namespaced_pod(p.metadata.name, name, grace_period_seconds=0)
        core.delete_namespace(name)


def wait_for(what: str, check: Callable[[], Any], within: float = WAIT) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"never {what}")


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def web_deployment(name: str, replicas: int, **container: Any) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                                  "name": "web", "image": "python:3.12",
                                  "command": ["python3", "-c", SERVER],
                                  "ports": [{"name": "http", "containerPort": 8080}],
                                  **container}]}}},
    }


def service(name: str, target_port: int | str) -> dict:
    return {"metadata": {"name": name},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "web", "port": 80, "targetPort": target_port}]}}


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
                                 "command": ["python3", "-c", SERVER],
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
    """) + SERVER
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
                                 "command": ["python3", "-c", SERVER],
                                 "env": [{"name": "BIND", "value": "127.0.0.1"}]}]}})
    wait_for("running", lambda: core.read_namespaced_pod("local", ns).status.phase == "Running")
    pod_ip = core.read_namespaced_pod("local", ns).status.pod_ip

    def fetch() -> bytes | None:
        pf = portforward(core.connect_get_namespaced_pod_portforward, "local", ns, ports="8080")
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
            pf.close()
        return data if data.startswith(b"HTTP/1.0 200") else None

    response = wait_for("answered through the port-forward", fetch)
    assert response.endswith(b"local")
    assert get(f"http://{pod_ip}:8080/") is None  # bound to the pod's localhost only

    pf = portforward(core.connect_get_namespaced_pod_portforward, "local", ns, ports="9999")
    try:
        error = wait_for("an error on the error channel", lambda: pf.error(9999), within=10)
    finally:
        pf.close()
    assert "9999" in error
