"""Point 2: discovery documents, read through the official client."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

pytestmark = pytest.mark.cluster


def test_version(api_client: Any) -> None:
    info = client.VersionApi(api_client).get_code()
    assert info.major == "1" and info.git_version.startswith("v1.")


def test_core_and_group_lists(api_client: Any) -> None:
    assert "v1" in client.CoreApi(api_client).get_api_versions().versions
    groups = {g.name: g for g in client.ApisApi(api_client).get_api_versions().groups}
    assert groups["apps"].preferred_version.group_version == "apps/v1"


def test_core_v1_resources(api_client: Any) -> None:
    found = {r.name: r for r in client.CoreV1Api(api_client).get_api_resources().resources}
    for name in ("namespaces", "pods", "pods/log", "pods/portforward", "services",
                 "endpoints", "configmaps", "secrets"):
        assert name in found, name
    assert found["pods"].namespaced and not found["namespaces"].namespaced
    assert found["pods"].kind == "Pod" and "po" in found["pods"].short_names
    assert set(found["pods"].verbs) >= {"get", "list", "watch", "create", "update", "patch",
                                        "delete"}


def test_apps_v1_resources(api_client: Any) -> None:
    found = {r.name: r for r in client.AppsV1Api(api_client).get_api_resources().resources}
    assert found["deployments"].kind == "Deployment"
    assert found["deployments/scale"].kind == "Scale"
    assert found["deployments/scale"].group == "autoscaling"
    assert "replicasets" in found


def test_unknown_path_is_404_status(api_client: Any) -> None:
    from kubernetes.client.rest import ApiException
    with pytest.raises(ApiException) as info:
        client.CustomObjectsApi(api_client).list_cluster_custom_object(
            "nope.example.com", "v1", "things")
    assert info.value.status == 404
    assert '"kind": "Status"' in info.value.body or '"kind":"Status"' in info.value.body
