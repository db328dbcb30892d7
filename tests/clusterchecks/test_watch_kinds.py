"""The watches bridge's waits use, served by the test cluster as Kubernetes serves them: pods by
label selector and EndpointSlices by a set-based `kubernetes.io/service-name in (...)` selector,
from a list's resourceVersion, checked with the official client's `watch.Watch` and with
`kubectl get -w --output-watch-events`."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch

from tests.clusterchecks.support import WAIT, scratch_namespace, service, wait_for, web_deployment
from tests.equipment.clients import KUBECTL

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture
def ns(api_client: Any) -> Iterator[str]:
    with scratch_namespace(api_client, "watch") as name:
        yield name


def ready_pod_ips(pod: Any) -> set[str]:
    conditions = pod.status.conditions or []
    if any(c.type == "Ready" and c.status == "True" for c in conditions):
        return {pod.status.pod_ip}
    return set()


def test_pods_and_endpointslices_watched_from_a_list(api_client: Any, kubectl: Any,
                                                     ns: str) -> None:
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    disc = client.DiscoveryV1Api(api_client)
    pods_rv = core.list_namespaced_pod(ns, label_selector="app=web").metadata.resource_version
    slices_rv = disc.list_namespaced_endpoint_slice(
        ns, label_selector="kubernetes.io/service-name in (web,other)").metadata.resource_version
    seen: list[str] = []
    kw = subprocess.Popen(
        [KUBECTL, "--kubeconfig", kubectl.kubeconfig, "--cache-dir", kubectl.cache_dir,
         "get", "pods", "-n", ns, "-l", "app=web", "-w",
         "--output-watch-events", "-o", "custom-columns=E:.type,N:.object.metadata.name",
         "--no-headers"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        apps.create_namespaced_deployment(ns, web_deployment("web", 1))
        core.create_namespaced_service(ns, service("web", "http"))

        ready: set[str] = set()
        for event in watch.Watch().stream(core.list_namespaced_pod, ns,
                                          label_selector="app=web",
                                          resource_version=pods_rv, timeout_seconds=int(WAIT)):
            assert event["type"] in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")
            ready = ready_pod_ips(event["object"])
            if ready:
                break
        assert ready, "no pod turned Ready in the watch"

        served: set[str] = set()
        for event in watch.Watch().stream(
                disc.list_namespaced_endpoint_slice, ns,
                label_selector="kubernetes.io/service-name in (web,other)",
                resource_version=slices_rv, timeout_seconds=int(WAIT)):
            sl = event["object"]
            assert sl.metadata.labels["kubernetes.io/service-name"] == "web"
            served = {a for ep in sl.endpoints or [] if ep.conditions.ready is not False
                      for a in ep.addresses}
            if served & ready:
                break
        assert served & ready, "the Ready pod never showed in the EndpointSlice watch"
        # kubectl's own list-then-watch shows the pod (once it has started: it is slower)
        def pump() -> None:
            assert kw.stdout is not None
            seen.extend(ln for ln in kw.stdout if ln.strip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        wait_for("kubectl get -w to print the pod",
                 lambda: any(ln.split()[:1] == ["ADDED"] for ln in seen))
    finally:
        kw.terminate()
        kw.wait(timeout=10)
    out = "".join(seen)
    lines = [ln.split() for ln in seen]
    assert lines and lines[0][0] == "ADDED" and lines[0][1].startswith("web-"), out
    assert all(ln[0] in ("ADDED", "MODIFIED", "DELETED") for ln in lines), out
