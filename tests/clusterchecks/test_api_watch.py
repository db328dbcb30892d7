"""Point 3: watch streams events from a resourceVersion (official client's Watch)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster


def _cm(name: str, labels: dict[str, str] | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels),
                              data={"k": "v"})


def test_watch_from_resource_version_replays_then_streams(core_v1: Any, namespace: str) -> None:
    start = core_v1.list_namespaced_config_map(namespace).metadata.resource_version
    core_v1.create_namespaced_config_map(namespace, _cm("w1"))
    core_v1.patch_namespaced_config_map("w1", namespace, {"data": {"k": "v2"}})
    core_v1.delete_namespaced_config_map("w1", namespace)
    seen = []
    for event in watch.Watch().stream(core_v1.list_namespaced_config_map, namespace,
                                      resource_version=start, timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name,
                     (event["object"].data or {}).get("k")))
        if len(seen) == 3:
            break
    assert seen == [("ADDED", "w1", "v"), ("MODIFIED", "w1", "v2"), ("DELETED", "w1", "v2")]


def test_watch_without_resource_version_starts_with_current_state(
        core_v1: Any, namespace: str) -> None:
    core_v1.create_namespaced_config_map(namespace, _cm("existing"))
    events = list(watch.Watch().stream(core_v1.list_namespaced_config_map, namespace,
                                       timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "existing")]


def test_label_selector_watch_sees_objects_leave_and_enter(core_v1: Any, namespace: str) -> None:
    start = core_v1.list_namespaced_config_map(namespace).metadata.resource_version
    core_v1.create_namespaced_config_map(namespace, _cm("sel", {"team": "a"}))
    core_v1.patch_namespaced_config_map("sel", namespace, {"metadata": {"labels": {"team": "b"}}})
    core_v1.patch_namespaced_config_map("sel", namespace, {"data": {"k": "ignored"}})
    core_v1.patch_namespaced_config_map("sel", namespace, {"metadata": {"labels": {"team": "a"}}})
    seen = []
    for event in watch.Watch().stream(core_v1.list_namespaced_config_map, namespace,
                                      label_selector="team=a", resource_version=start,
                                      timeout_seconds=2):
        seen.append(event["type"])
        if len(seen) == 3:
            break
    assert seen == ["ADDED", "DELETED", "ADDED"]


def test_watch_timeout_seconds_ends_the_stream(core_v1: Any, namespace: str) -> None:
    resp = core_v1.list_namespaced_config_map(namespace, watch=True, timeout_seconds=1,
                                              _preload_content=False)
    try:
        assert resp.status == 200
        assert resp.read() == b""  # returns (no events) once the server ends the stream
    finally:
        resp.release_conn()


def test_watch_field_selector_on_name(core_v1: Any, namespace: str) -> None:
    start = core_v1.list_namespaced_config_map(namespace).metadata.resource_version
    core_v1.create_namespaced_config_map(namespace, _cm("other"))
    core_v1.create_namespaced_config_map(namespace, _cm("target"))
    for event in watch.Watch().stream(core_v1.list_namespaced_config_map, namespace,
                                      field_selector="metadata.name=target",
                                      resource_version=start, timeout_seconds=2):
        assert event["object"].metadata.name == "target"
        break
    else:
        pytest.fail("no event for the selected name")


def test_malformed_resource_version_is_bad_request(core_v1: Any, namespace: str) -> None:
    with pytest.raises(ApiException) as info:
        core_v1.list_namespaced_config_map(namespace, watch=True, resource_version="abc",
                                           timeout_seconds=1, _preload_content=False)
    assert info.value.status == 400
    assert json.loads(info.value.body)["reason"] == "BadRequest"
