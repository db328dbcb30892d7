"""Issue 19, end to end on the cluster: the pod bridge tunnels to is proven by what it runs,
not by what it claims (item 1), and a mesh's injection is accepted where the original's own
pods carry it (DESIGN.md, trust).

- a neighbour's copy of the proxy pod with an init container of theirs, which claims the
  proxy's ReplicaSet with a controller reference (name and UID copied) and a high
  pod-deletion-cost once the genuine pod goes away, never gets the tunnel: bridge says it
  ignores it and reconnects to the ReplicaSet's next pod;
- in a namespace whose pods a mesh injects into (tests/equipment/localcluster/admission.py: an init
  container, a proxy container, a volume, a label, an annotation), the swap serves, and the
  neighbour's copy is still refused there.
"""

from __future__ import annotations

import copy
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.model import state, trust
from tests.equipment.localcluster import admission
from tests.equipment.realcluster import fixture as real_cluster

from .support import Workload, http_get, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e,
              pytest.mark.only_on("real", why="the attack rides the ReplicaSet controller's "
                                              "adoption and the mesh a mutating admission "
                                              "webhook: the real cluster is the authority on both "
                                              "(the local one imitates them)")]

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def session_pods(w: Workload) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(w.k("get", "pods", "-l", state.SESSION_LABEL,
                                                 "-o", "json"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def mallory(genuine: dict[str, Any]) -> dict[str, Any]:
    """The genuine proxy pod's spec with an init container of the neighbour's, under labels
    no ReplicaSet selects (so nothing adopts or deletes it while it starts)."""
    spec = copy.deepcopy(genuine["spec"])
    spec["initContainers"] = [{"name": "mallory", "image": "python:3.11-slim",
                               "command": ["python", "-c", "print('mallory ran')"]}] + \
        list(spec.get("initContainers") or [])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "mallory", "labels": {"app": "staging"},
                         "annotations": {DELETION_COST: "1000"}},
            "spec": spec}


def take_the_replicaset(w: Workload, api_client: Any, b: Any) -> None:
    """The attack: the copy runs, the genuine pod goes away and the copy claims the proxy's
    ReplicaSet at once (labels and a controller reference copied from the genuine pod)."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api_client)
    (genuine,) = session_pods(w)
    w.kubectl("-n", w.namespace, "apply", "--validate=false", "-f", "-",
              input=json.dumps(mallory(genuine)))
    wait_until("the copy to run", lambda: w.get("pod", "mallory")["status"].get(
        "phase") == "Running")
    assert "mallory ran" in w.k("logs", "mallory", "-c", "mallory")  # their code did run
    ref = trust.controller_of(genuine)
    core.delete_namespaced_pod(genuine["metadata"]["name"], w.namespace,
                               grace_period_seconds=0)
    core.patch_namespaced_pod("mallory", w.namespace, {"metadata": {
        "labels": genuine["metadata"]["labels"], "ownerReferences": [ref]}})
    b.wait_for("connection to the proxy pod lost")
    # the ReplicaSet counts the copy as its pod (a replacement it made is deleted first)
    wait_until("the copy to be the ReplicaSet's only pod",
               lambda: [p["metadata"]["name"] for p in session_pods(w)] == ["mallory"])


def the_copy_never_gets_the_tunnel(w: Workload, api_client: Any, port: int, b: Any) -> None:
    take_the_replicaset(w, api_client, b)
    b.wait_for("ignoring pod mallory")
    time.sleep(3)  # a few reconnect attempts with only the copy there
    assert "tunnel to pod mallory" not in b.stderr, b.stderr
    assert "initContainers has a container mallory" in b.stderr, b.stderr
    w.k("delete", "pod", "mallory", "--grace-period=0")
    b.wait_for("reconnected")
    assert "tunnel to pod mallory" not in b.stderr
    ip = w.service_ip()
    wait_until("the laptop to answer through the Service",
               lambda: http_get(ip, 80) == f"laptop {port}\n")
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr


def test_a_copy_claiming_the_proxys_replicaset_never_gets_the_tunnel(
        make_workload: Any, api_client: Any) -> None:
    w = make_workload(replicas=1)
    b, port = w.attach()
    w.assert_swapped()
    the_copy_never_gets_the_tunnel(w, api_client, port, b)


@pytest.fixture
def meshed(kubectl: Any, namespace: str) -> Iterator[None]:
    """The namespace's pods get the mesh's injection: on the test cluster by its admission
    emulation (a namespace label), on the real cluster by a TLS mutating webhook."""
    if real_cluster.selected() != "real":
        kubectl("label", "namespace", namespace, f"{admission.MESH_LABEL}=inject")
        yield
        return
    from tests.equipment.realcluster.mesh_webhook import MeshWebhook

    hook = MeshWebhook(kubectl, namespace)
    try:
        yield
    finally:
        hook.close()


def test_a_swap_serves_in_a_meshed_namespace(meshed: None, make_workload: Any) -> None:
    w = make_workload()
    for pod in json.loads(w.k("get", "pods", "-l", "app=hello", "-o", "json"))["items"]:
        assert [c["name"] for c in pod["spec"]["containers"]][-1] == admission.PROXY
    b, port = w.attach()
    proxy = w.assert_swapped()
    (pod,) = session_pods(w)
    injected = next(c for c in pod["spec"]["containers"] if c["name"] == admission.PROXY)
    # the injector named the proxy's workload: what differs from the original's pods
    assert {"name": "MESH_WORKLOAD_NAME", "value": proxy["metadata"]["name"]} in injected["env"]
    assert pod["spec"]["initContainers"][0]["name"] == admission.INIT
    ip = w.service_ip()
    wait_until("the laptop to answer through the Service",
               lambda: http_get(ip, 80) == f"laptop {port}\n")
    assert "ignoring pod" not in b.stderr, b.stderr
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr


def test_under_a_mesh_a_copy_with_a_container_more_is_still_refused(
        meshed: None, make_workload: Any, api_client: Any) -> None:
    w = make_workload(replicas=1)
    b, port = w.attach()
    the_copy_never_gets_the_tunnel(w, api_client, port, b)
