"""`spec.readinessGates` through real clients, as the kubelet honours them on a real cluster
(kubernetes pkg/kubelet/status/generate.go, GeneratePodReadyCondition): a pod whose containers
are ready stays not Ready, out of its Service's EndpointSlices and unreached through the
ClusterIP, until every gate's condition (written by someone else with `kubectl patch
--subresource=status`) is "True"; a gate condition set to False or removed takes it out again,
and the kubelet's own status writes keep the conditions it does not own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.clusterchecks.support import HOSTNAME_SERVER, get, scratch_namespace, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

GATE_A, GATE_B = "example.com/gate-a", "example.com/gate-b"


@pytest.fixture
def ns(api_client: Any) -> Iterator[str]:
    with scratch_namespace(api_client, "gates") as name:
        yield name


def web_deployment(name: str, gates: list[str]) -> dict:
    """`name` pods (label role=NAME) behind the Service `web` (label app=web)."""
    labels = {"app": "web", "role": name}
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 2, "containers": [{
        "name": "web", "image": "python:3.12", "command": ["python3", "-c", HOSTNAME_SERVER],
        "ports": [{"name": "http", "containerPort": 8080}]}]}
    if gates:
        spec["readinessGates"] = [{"conditionType": g} for g in gates]
    return {"metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


def conditions(core: client.CoreV1Api, ns: str, pod: str) -> dict[str, Any]:
    """The pod's conditions by type, read with the official client."""
    status = core.read_namespaced_pod(pod, ns).status
    return {c.type: c for c in status.conditions or []}


def slice_ready(discovery: client.DiscoveryV1Api, ns: str, ip: str) -> bool | None:
    """`conditions.ready` of the endpoint with address `ip` in the Service `web`'s
    EndpointSlices; None if no endpoint has that address."""
    slices = discovery.list_namespaced_endpoint_slice(
        ns, label_selector="kubernetes.io/service-name=web").items
    for s in slices:
        for ep in s.endpoints or []:
            if ip in ep.addresses:
                return bool(ep.conditions and ep.conditions.ready)
    return None


def set_gate(kubectl: Any, ns: str, pod: str, gate: str, status: str | None) -> None:
    """Write (or with None remove) the gate's condition through the pods/status subresource,
    with a strategic merge patch: conditions merge by `type`."""
    condition: dict[str, Any] = {"type": gate}
    condition.update({"status": status} if status else {"$patch": "delete"})
    kubectl("patch", "pod", pod, "-n", ns, "--subresource=status", "--type=strategic",
            "-p", json.dumps({"status": {"conditions": [condition]}}))


def test_readiness_gates_decide_ready_and_traffic(api_client: Any, kubectl: Any,
                                                  ns: str) -> None:
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    apps.create_namespaced_deployment(ns, web_deployment("gated", [GATE_A, GATE_B]))
    apps.create_namespaced_deployment(ns, web_deployment("plain", []))
    core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}})
    # The ungated pod answers through the ClusterIP: the proof that the proxy serves at all.
    kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "-l", "role=plain",
            "--timeout=30s")
    plain = core.list_namespaced_pod(ns, label_selector="role=plain").items[0].metadata.name
    url = f"http://{core.read_namespaced_service('web', ns).spec.cluster_ip}/"
    wait_for("the plain pod served through the ClusterIP", lambda: get(url) == plain)

    kubectl("wait", "-n", ns, "--for=condition=ContainersReady", "pod", "-l", "role=gated",
            "--timeout=30s")
    pod = core.list_namespaced_pod(ns, label_selector="role=gated").items[0]
    gated, ip = pod.metadata.name, pod.status.pod_ip
    assert pod.status.phase == "Running" and pod.status.container_statuses[0].ready

    def answers() -> set[str | None]:
        return {get(url) for _ in range(12)}

    def out_of_service(message: str) -> None:
        wait_for("the gated pod's endpoint not ready",
                 lambda: slice_ready(discovery, ns, ip) is False)
        ready = conditions(core, ns, gated)["Ready"]
        assert (ready.status, ready.reason, ready.message) == (
            "False", "ReadinessGatesNotReady", message)
        assert conditions(core, ns, gated)["ContainersReady"].status == "True"
        # The proxy follows the endpoints a moment later (kube-proxy too): wait for that,
        # then a second round of requests must still never reach the gated pod.
        wait_for("only the plain pod served", lambda: answers() == {plain})
        assert answers() == {plain}

    def in_service() -> None:
        wait_for("the gated pod Ready",
                 lambda: conditions(core, ns, gated)["Ready"].status == "True")
        wait_for("the gated pod's endpoint ready", lambda: slice_ready(discovery, ns, ip))
        wait_for("the gated pod served through the ClusterIP", lambda: get(url) == gated)

    missing = 'corresponding condition of pod readiness gate "{}" does not exist.'
    not_true = 'the status of pod readiness gate "{}" is not "True", but False'
    out_of_service(f"{missing.format(GATE_A)}, {missing.format(GATE_B)}")

    set_gate(kubectl, ns, gated, GATE_A, "True")  # one gate of two: still out
    wait_for("gate A seen by the kubelet", lambda: "readiness gate \"example.com/gate-a\""
             not in (conditions(core, ns, gated)["Ready"].message or ""))
    out_of_service(missing.format(GATE_B))
    # kubectl get -o wide: the server's table counts the gates whose condition is "True"
    wide = kubectl("get", "pod", gated, "-n", ns, "-o", "wide")
    assert wide.split("\n")[0].split()[-2:] == ["READINESS", "GATES"], wide
    assert wide.split("\n")[1].split()[-1] == "1/2", wide

    set_gate(kubectl, ns, gated, GATE_B, "True")
    in_service()
    # The kubelet wrote Ready=True after the patches and kept the conditions it does not own.
    by_type = conditions(core, ns, gated)
    assert by_type[GATE_A].status == by_type[GATE_B].status == "True"
    assert by_type["ContainersReady"].status == "True"

    set_gate(kubectl, ns, gated, GATE_A, "False")
    out_of_service(not_true.format(GATE_A))

    set_gate(kubectl, ns, gated, GATE_A, "True")
    in_service()

    set_gate(kubectl, ns, gated, GATE_B, None)  # a removed condition counts as False
    out_of_service(missing.format(GATE_B))
    assert GATE_B not in conditions(core, ns, gated)
    assert conditions(core, ns, gated)[GATE_A].status == "True"


def test_gate_condition_types_must_be_qualified_names(api_client: Any, ns: str) -> None:
    """As the real API server's validateReadinessGates: each conditionType is a qualified
    name (optional DNS subdomain prefix and '/', then a name), in a pod or a template."""
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    deployment = web_deployment("bad", ["Example.com/gate"])  # the prefix is not lowercase
    with pytest.raises(client.ApiException) as refused:
        apps.create_namespaced_deployment(ns, deployment)
    assert refused.value.status == 422
    causes = json.loads(refused.value.body)["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.template.spec.readinessGates[0].conditionType"]
    assert causes[0]["message"].startswith(
        'Invalid value: "Example.com/gate": prefix part a lowercase RFC 1123 subdomain')
    pod = {"metadata": {"name": "bad"}, "spec": {**deployment["spec"]["template"]["spec"],
                                                 "readinessGates": [{"conditionType": "a/b/c"}]}}
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(ns, pod)
    causes = json.loads(refused.value.body)["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.readinessGates[0].conditionType"]
    assert "a qualified name must consist of alphanumeric characters" in causes[0]["message"]
    assert apps.list_namespaced_deployment(ns).items == []
    assert core.list_namespaced_pod(ns).items == []
