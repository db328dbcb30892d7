"""Point 3: resources and verbs through the official client - create (generateName), get,
list with label/field selectors, update with 409 on a stale resourceVersion, the three patch
types, delete, and Status errors with the right code and reason."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster


def _status(err: ApiException) -> dict[str, Any]:
    body = json.loads(err.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == err.status
    return body


def _cm(name: str = "", labels: dict[str, str] | None = None, **meta: Any) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name or None, labels=labels,
                                                           **meta), data={"k": "v"})


def test_create_get_delete_configmap(core_v1: Any, namespace: str) -> None:
    created = core_v1.create_namespaced_config_map(namespace, _cm("one"))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    got = core_v1.read_namespaced_config_map("one", namespace)
    assert got.data == {"k": "v"} and got.metadata.uid == created.metadata.uid
    status = core_v1.delete_namespaced_config_map("one", namespace)
    status = status if isinstance(status, dict) else status.to_dict()
    assert status["kind"] == "Status" and status["status"] == "Success"
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_config_map("one", namespace)
    body = _status(info.value)
    assert body["reason"] == "NotFound" and body["message"] == 'configmaps "one" not found'


def test_generate_name(core_v1: Any, namespace: str) -> None:
    a = core_v1.create_namespaced_config_map(namespace, _cm(generate_name="gen-"))
    b = core_v1.create_namespaced_config_map(namespace, _cm(generate_name="gen-"))
    assert a.metadata.name.startswith("gen-") and b.metadata.name.startswith("gen-")
    assert a.metadata.name != b.metadata.name and len(a.metadata.name) == len("gen-") + 5


def test_already_exists(core_v1: Any, namespace: str) -> None:
    core_v1.create_namespaced_config_map(namespace, _cm("dup"))
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_config_map(namespace, _cm("dup"))
    body = _status(info.value)
    assert (body["code"], body["reason"]) == (409, "AlreadyExists")
    assert body["message"] == 'configmaps "dup" already exists'


def test_invalid_name_is_422(core_v1: Any, namespace: str) -> None:
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_config_map(namespace, _cm("Bad_Name"))
    body = _status(info.value)
    assert (body["code"], body["reason"]) == (422, "Invalid")
    assert body["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '
        "a lowercase RFC 1123 subdomain must consist of")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    # Service names are DNS-1035 labels: they may not start with a digit.
    svc = client.V1Service(metadata=client.V1ObjectMeta(name="1svc"),
                           spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)]))
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_service(namespace, svc)
    assert "a DNS-1035 label must consist of" in _status(info.value)["message"]


def test_missing_namespace_is_404(core_v1: Any) -> None:
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_config_map("no-such-ns", _cm("x"))
    body = _status(info.value)
    assert body["reason"] == "NotFound" and body["message"] == 'namespaces "no-such-ns" not found'


def test_update_conflict_on_stale_resource_version(core_v1: Any, namespace: str) -> None:
    first = core_v1.create_namespaced_config_map(namespace, _cm("cfl"))
    first.data = {"k": "v2"}
    second = core_v1.replace_namespaced_config_map("cfl", namespace, first)
    assert second.metadata.resource_version != first.metadata.resource_version
    first.data = {"k": "stale"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as info:
        core_v1.replace_namespaced_config_map("cfl", namespace, first)
    body = _status(info.value)
    assert (body["code"], body["reason"]) == (409, "Conflict")
    assert body["message"] == (
        'Operation cannot be fulfilled on configmaps "cfl": the object has been modified; '
        "please apply your changes to the latest version and try again")
    assert core_v1.read_namespaced_config_map("cfl", namespace).data == {"k": "v2"}


def test_label_selectors(core_v1: Any, namespace: str) -> None:
    for name, labels in (("a", {"app": "web", "tier": "front"}),
                         ("b", {"app": "web", "tier": "back"}),
                         ("c", {"app": "db"}), ("d", None)):
        core_v1.create_namespaced_config_map(namespace, _cm(name, labels))

    def names(selector: str) -> list[str]:
        items = core_v1.list_namespaced_config_map(namespace, label_selector=selector).items
        return sorted(i.metadata.name for i in items)

    assert names("app=web") == ["a", "b"]
    assert names("app==web,tier=back") == ["b"]
    assert names("app!=web") == ["c", "d"]
    assert names("tier in (front, back)") == ["a", "b"]
    assert names("app notin (web)") == ["c", "d"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c", "d"]
    with pytest.raises(ApiException) as info:
        names("app in (web")
    assert _status(info.value)["reason"] == "BadRequest"


def test_field_selector(core_v1: Any, namespace: str) -> None:
    for name in ("x1", "x2"):
        core_v1.create_namespaced_config_map(namespace, _cm(name))
    items = core_v1.list_namespaced_config_map(namespace,
                                               field_selector="metadata.name=x2").items
    assert [i.metadata.name for i in items] == ["x2"]
    items = core_v1.list_config_map_for_all_namespaces(
        field_selector=f"metadata.namespace={namespace},metadata.name!=x2").items
    assert [i.metadata.name for i in items] == ["x1"]
    with pytest.raises(ApiException) as info:
        core_v1.list_namespaced_config_map(namespace, field_selector="data.k=v")
    assert _status(info.value)["reason"] == "BadRequest"


def test_merge_strategic_and_json_patch(apps_v1: Any, namespace: str) -> None:
    dep = {
        "metadata": {"name": "p", "labels": {"a": "1"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "p"}},
                 "template": {"metadata": {"labels": {"app": "p"}}, "spec": {"containers": [
                     {"name": "main", "image": "img:1", "command": ["sleep", "100"],
                      "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                      "ports": [{"containerPort": 8080}]},
                     {"name": "side", "image": "side:1", "command": ["sleep", "100"]}]}}},
    }
    apps_v1.create_namespaced_deployment(namespace, dep)
    # Strategic merge (the client's default for dicts on patch_*): lists merge by key.
    out = apps_v1.patch_namespaced_deployment("p", namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "main", "image": "img:2",
                        "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
                        "ports": [{"containerPort": 9090}]}]}}}})
    main, side = out.spec.template.spec.containers
    assert (main.name, main.image, side.name, side.image) == ("main", "img:2", "side", "side:1")
    assert [(e.name, e.value) for e in main.env] == [("A", "1"), ("B", "two"), ("C", "3")]
    assert sorted(p.container_port for p in main.ports) == [8080, 9090]
    # $patch: delete removes one element by its key.
    out = apps_v1.patch_namespaced_deployment("p", namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "side", "$patch": "delete"}]}}}})
    assert [c.name for c in out.spec.template.spec.containers] == ["main"]
    # JSON merge patch: lists are replaced; null removes a key.
    api = apps_v1.api_client
    api.set_default_header("Content-Type", "application/merge-patch+json")
    try:
        out = apps_v1.patch_namespaced_deployment(
            "p", namespace, {"metadata": {"labels": {"a": None, "b": "2"}},
                             "spec": {"template": {"spec": {"containers": [
                                 {"name": "only", "image": "o:1", "command": ["x"]}]}}}})
    finally:
        api.default_headers.pop("Content-Type", None)
    assert out.metadata.labels == {"b": "2"}
    assert [c.name for c in out.spec.template.spec.containers] == ["only"]
    # JSON patch (a list body).
    out = apps_v1.patch_namespaced_deployment("p", namespace, [
        {"op": "replace", "path": "/spec/replicas", "value": 0},
        {"op": "add", "path": "/metadata/annotations", "value": {"note": "x"}},
        {"op": "test", "path": "/metadata/labels/b", "value": "2"}])
    assert out.metadata.annotations == {"note": "x"}
    with pytest.raises(ApiException) as info:
        apps_v1.patch_namespaced_deployment("p", namespace, [
            {"op": "remove", "path": "/metadata/nope"}])
    assert info.value.status == 422


def test_patch_missing_object_is_404(core_v1: Any, namespace: str) -> None:
    with pytest.raises(ApiException) as info:
        core_v1.patch_namespaced_config_map("ghost", namespace, {"data": {"a": "b"}})
    assert _status(info.value)["reason"] == "NotFound"


def test_secret_string_data_and_type(core_v1: Any, namespace: str) -> None:
    core_v1.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="s"), string_data={"password": "hunter2"}))
    got = core_v1.read_namespaced_secret("s", namespace)
    assert got.type == "Opaque"
    assert base64.b64decode(got.data["password"]) == b"hunter2"


def test_service_defaults_and_cluster_ip(core_v1: Any, namespace: str) -> None:
    svc = core_v1.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"},
                                  ports=[client.V1ServicePort(port=80)])))
    spec = svc.spec
    assert spec.type == "ClusterIP" and spec.session_affinity == "None"
    assert spec.ports[0].protocol == "TCP" and spec.ports[0].target_port == 80
    assert spec.cluster_ip and spec.cluster_ips == [spec.cluster_ip]
    kube = core_v1.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert spec.cluster_ip.rsplit(".", 1)[0] == kube.rsplit(".", 1)[0]  # same /24 range
    assert spec.cluster_ip != kube
    # An update that leaves clusterIP out keeps it.
    ip = spec.cluster_ip
    svc.spec.cluster_ip, svc.spec.cluster_ips = None, None
    svc.metadata.labels = {"x": "y"}
    again = core_v1.replace_namespaced_service("web", namespace, svc)
    assert again.spec.cluster_ip == ip


def test_namespaces_exist_and_delete(core_v1: Any, namespace: str) -> None:
    names = {n.metadata.name for n in core_v1.list_namespace().items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease", namespace} <= names
    with pytest.raises(ApiException) as info:
        core_v1.delete_namespace("default")
    assert info.value.status == 403


def test_bad_request_body(core_v1: Any, namespace: str) -> None:
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_config_map(namespace, {"kind": "Secret", "apiVersion": "v1",
                                                         "metadata": {"name": "x"}})
    assert _status(info.value)["reason"] == "BadRequest"


def test_pod_defaults(core_v1: Any, namespace: str) -> None:
    pod = core_v1.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="defaults"),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="c", image="busybox", command=["sleep", "30"],
            ports=[client.V1ContainerPort(container_port=80)])])))
    c = pod.spec.containers[0]
    assert c.termination_message_path == "/dev/termination-log"
    assert c.image_pull_policy == "Always"  # no tag = latest
    assert c.ports[0].protocol == "TCP"
    assert pod.spec.restart_policy == "Always"
    assert pod.spec.termination_grace_period_seconds == 30
    assert pod.spec.dns_policy == "ClusterFirst"
    assert pod.spec.node_name
    core_v1.delete_namespaced_pod("defaults", namespace, grace_period_seconds=0)


def test_list_shape(api_client: Any, core_v1: Any, namespace: str) -> None:
    core_v1.create_namespaced_config_map(namespace, _cm("shape"))
    response = core_v1.list_namespaced_config_map(namespace, _preload_content=False)
    body = json.loads(response.data)
    assert (body["kind"], body["apiVersion"]) == ("ConfigMapList", "v1")
    assert body["metadata"]["resourceVersion"]
    # Items of a typed list carry no kind/apiVersion, as Kubernetes serves them.
    assert [set(i) & {"kind", "apiVersion"} for i in body["items"]] == [set()]
    single = json.loads(core_v1.read_namespaced_config_map("shape", namespace,
                                                           _preload_content=False).data)
    assert (single["kind"], single["apiVersion"]) == ("ConfigMap", "v1")
