"""The sample workload the end-to-end suite and the fault suite swap: a Deployment whose
container serves `cluster <pod> <port>` on every port in its PORTS variable, and its Service."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import http_server

# Like a well-behaved service, it keeps serving for a while after SIGTERM (5 s, within the
# default 30 s terminationGracePeriodSeconds the workload keeps on either cluster): the
# endpoints controller drops a terminating pod while the kubelet already signals it, and
# kube-proxy stops routing to it later still; a server that died at once would fail the
# requests in flight meanwhile (Kubernetes' own termination race, which a preStop sleep or a
# graceful shutdown covers) whoever scaled it down.
CLUSTER_SERVER = http_server(
    'body = f"cluster {os.environ[\'HOSTNAME\']} {port}\\n".encode()',
    host="", ports='os.environ["PORTS"].split(",")', prelude="""
def _term(*_):
    threading.Thread(target=lambda: (time.sleep(5.0), os._exit(0)), daemon=True).start()
signal.signal(signal.SIGTERM, _term)
""")

def workload_manifest(name: str, replicas: int, ports: list[dict[str, Any]],
                      service_ports: list[dict[str, Any]], extra_env: list[dict[str, Any]]
                      | None = None, env_from: list[dict[str, Any]] | None = None,
                      container_extra: dict[str, Any] | None = None,
                      pod_extra: dict[str, Any] | None = None) -> str:
    port_list = ",".join(str(p["containerPort"]) for p in ports)
    container = {
        "name": "web", "image": "python:3.11-slim",
        "command": ["python3", "-c", CLUSTER_SERVER],
        "ports": ports,
        "env": [{"name": "PORTS", "value": port_list}] + (extra_env or []),
        "readinessProbe": {"tcpSocket": {"port": ports[0]["containerPort"]},
                           "periodSeconds": 1},
    }
    if env_from:
        container["envFrom"] = env_from
    container.update(container_extra or {})
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [container], **(pod_extra or {})}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"selector": {"app": name}, "ports": service_ports}}
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [deployment, service]})
