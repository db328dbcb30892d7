"""What several cluster checks share: the workload they run in pods, a bounded wait, a scratch
namespace that is emptied and removed afterwards, and "is it gone yet" for deletions."""

from __future__ import annotations

import contextlib
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward

from tests.helpers import http_server

WAIT = 30.0  # bound on any single wait through the API

# Answers GET with its pod name (HOSTNAME); BIND (default 0.0.0.0) and PORT (default 8080)
# from the environment. Installs no SIGTERM handler: a script may put its own in front.
HOSTNAME_SERVER = http_server(
    'body = os.environ["HOSTNAME"].encode()', host_expr='os.environ.get("BIND", "0.0.0.0")',
    ports='[os.environ.get("PORT", "8080")]')


def web_deployment(name: str, replicas: int, **container: Any) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                                  "name": "web", "image": "python:3.12",
                                  "command": ["python3", "-c", HOSTNAME_SERVER],
                                  "ports": [{"name": "http", "containerPort": 8080}],
                                  **container}]}}},
    }


def service(name: str, target_port: int | str) -> dict:
    return {"metadata": {"name": name},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "web", "port": 80, "targetPort": target_port}]}}



def wait_for(what: str, check: Callable[[], Any], within: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy, and return that (bounded: a hang guard,
    not a timing assertion)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"never {what}")


def get(url: str) -> str | None:
    """The body GET `url` answers, or None if it could not be fetched (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


@contextlib.contextmanager
def scratch_namespace(api_client: Any, prefix: str) -> Iterator[str]:
    """A new namespace `PREFIX-xxxxxx`; afterwards its Deployments are deleted (so nothing
    recreates pods), then its pods without grace, then the namespace."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        for d in apps.list_namespaced_deployment(name).items:
            apps.delete_namespaced_deployment(d.metadata.name, name)
        for p in core.list_namespaced_pod(name).items:
            with contextlib.suppress(ApiException):  # its controller may have removed it
                core.delete_namespaced_pod(p.metadata.name, name, grace_period_seconds=0)
        core.delete_namespace(name)


@contextlib.contextmanager
def port_forward(core: client.CoreV1Api, pod: str, namespace: str, port: int) -> Iterator[Any]:
    """`kubernetes.stream.portforward` to one port of `pod`, closed afterwards."""
    pf = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace,
                     ports=str(port))
    try:
        yield pf
    finally:
        pf.close()


def localhost_web_pod(core: client.CoreV1Api, namespace: str, name: str, server: str,
                      ports: tuple[int, ...]) -> str:
    """Create pod `name` running the Python `server`, which knows its POD_NAME and listens on
    127.0.0.1 only: reachable by port-forward (which dials localhost in the pod's network
    namespace) and by an exec probe, not via the pod IP. Returns once it is Ready."""
    probe = ("import socket; [socket.create_connection(('127.0.0.1', p), 1).close() "
             f"for p in {ports!r}]")
    core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(termination_grace_period_seconds=1, containers=[
            client.V1Container(
                name="web", image="example/web:1", command=["python3", "-c", server],
                env=[client.V1EnvVar(name="POD_NAME", value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")))],
                readiness_probe=client.V1Probe(
                    _exec=client.V1ExecAction(command=["python3", "-c", probe]),
                    period_seconds=1))])))

    def ready() -> bool:
        pod = core.read_namespaced_pod(name, namespace)
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

    wait_for(f"pod {name} to be Ready", ready)
    return name


def gone(read: Callable[..., Any], *args: Any) -> Callable[[], bool]:
    """A check for `wait_for`/`wait_until`: true once `read(*args)` answers 404 Not Found."""
    def check() -> bool:
        try:
            read(*args)
        except ApiException as err:
            return err.status == 404
        return False
    return check
