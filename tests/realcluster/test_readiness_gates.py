"""The authority for tests/clusterchecks/test_readiness_gates.py: on real Kubernetes a pod with
an unmet `spec.readinessGates` entry has ready containers but is not Ready and gets no traffic
through its Service's ClusterIP; its gate's condition patched "True" through pods/status (kubectl
--subresource=status) brings it in, "False" takes it out again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.support import http_get, wait_until
from tests.equipment.workload import CLUSTER_SERVER

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

GATE = "example.com/gate"


def deployment(name: str, gates: list[str]) -> dict:
    labels = {"app": "web", "role": name}
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 2, "containers": [{
        "name": "web", "image": "python:3.11-slim", "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", CLUSTER_SERVER], "env": [{"name": "PORTS", "value": "8080"}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}
    if gates:
        spec["readinessGates"] = [{"conditionType": g} for g in gates]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


def test_readiness_gate_decides_ready_and_traffic(kubectl: Any, namespace: str) -> None:
    def k(*args: str, **kw: Any) -> Any:
        return kubectl("-n", namespace, *args, **kw)

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}
    items = [deployment("gated", [GATE]), deployment("plain", []), service]
    k("apply", "--validate=false", "-f", "-",
      input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    k("wait", "--for=condition=Ready", "pod", "-l", "role=plain", "--timeout=120s")
    k("wait", "--for=condition=ContainersReady", "pod", "-l", "role=gated", "--timeout=120s")
    gated = json.loads(k("get", "pods", "-l", "role=gated", "-o", "json"))["items"][0]
    name, ip = gated["metadata"]["name"], gated["status"]["podIP"]
    plain = k("get", "pods", "-l", "role=plain", "-o", "jsonpath={.items[0].metadata.name}")
    cluster_ip = k("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")

    def pod() -> dict:
        return json.loads(k("get", "pod", name, "-o", "json"))

    def ready() -> dict:
        return next(c for c in pod()["status"]["conditions"] if c["type"] == "Ready")

    def endpoint_ready() -> bool | None:
        slices = json.loads(k("get", "endpointslices", "-l",
                              "kubernetes.io/service-name=web", "-o", "json"))["items"]
        return next((bool(e["conditions"].get("ready")) for s in slices
                     for e in s.get("endpoints") or [] if ip in e["addresses"]), None)

    def answers() -> set[str]:
        return {http_get(cluster_ip, 80).split()[1] for _ in range(12)}

    def set_gate(status: str) -> None:
        k("patch", "pod", name, "--subresource=status", "--type=strategic", "-p",
          json.dumps({"status": {"conditions": [{"type": GATE, "status": status}]}}))

    def out_of_service(message: str) -> None:
        wait_until("the gated pod's endpoint not ready", lambda: endpoint_ready() is False)
        assert (ready()["status"], ready()["reason"], ready()["message"]) == (
            "False", "ReadinessGatesNotReady", message)
        wait_until("only the plain pod served", lambda: answers() == {plain})
        assert answers() == {plain}

    assert pod()["status"]["phase"] == "Running"
    out_of_service(f'corresponding condition of pod readiness gate "{GATE}" does not exist.')
    wide = k("get", "pod", name, "-o", "wide").split("\n")
    assert wide[0].split()[-2:] == ["READINESS", "GATES"] and wide[1].split()[-1] == "0/1"

    set_gate("True")
    wait_until("the gated pod Ready", lambda: ready()["status"] == "True")
    wait_until("its endpoint ready", endpoint_ready)
    wait_until("the gated pod served", lambda: name in answers())
    assert {"type": GATE, "status": "True"}.items() <= next(
        c for c in pod()["status"]["conditions"] if c["type"] == GATE).items()

    set_gate("False")
    out_of_service(f'the status of pod readiness gate "{GATE}" is not "True", but False')


def test_gate_condition_type_must_be_a_qualified_name(kubectl: Any, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"}, "spec": {
        **deployment("bad", [])["spec"]["template"]["spec"],
        "readinessGates": [{"conditionType": "Example.com/gate"}]}}
    refused = kubectl.run("-n", namespace, "create", "--validate=false", "-f", "-",
                          input=json.dumps(pod), check=False)
    assert refused.returncode == 1
    assert 'spec.readinessGates[0].conditionType: Invalid value: "Example.com/gate": prefix ' \
           "part a lowercase RFC 1123 subdomain" in refused.stderr, refused.stderr
