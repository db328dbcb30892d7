"""Point 3: pods/log, */status, graceful pod deletion and delete options, through the official
client."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.clusterchecks.support import gone

pytestmark = pytest.mark.cluster

PRINTER = ("import signal, sys, time\n"
           "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), "
           "sys.exit(0)))\n"
           "for i in range(3): print(f'line {i}', flush=True)\n"
           "time.sleep(600)\n")


def _pod(name: str, grace: int = 5) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(termination_grace_period_seconds=grace, containers=[
            client.V1Container(name="main", image="example/printer:1",
                               command=["python3", "-u", "-c", PRINTER])]))


def _running(core_v1: Any, ns: str, name: str) -> bool:
    pod = core_v1.read_namespaced_pod(name, ns)
    return pod.status.phase == "Running"


def _log_has(core_v1: Any, ns: str, name: str, text: str) -> bool:
    try:
        return text in core_v1.read_namespaced_pod_log(name, ns)
    except ApiException as err:
        if err.status == 400 and "waiting to start" in (err.body or ""):
            return False  # as in Kubernetes: no log before the container started
        raise


def test_pod_log_tail_and_follow(core_v1: Any, namespace: str, wait_until: Any) -> None:
    core_v1.create_namespaced_pod(namespace, _pod("logs"))
    wait_until(lambda: _log_has(core_v1, namespace, "logs", "line 2"),
               30, "the pod's output")
    log = core_v1.read_namespaced_pod_log("logs", namespace, container="main")
    assert log.splitlines()[:3] == ["line 0", "line 1", "line 2"]
    assert core_v1.read_namespaced_pod_log("logs", namespace, tail_lines=1) == "line 2\n"
    stream = core_v1.read_namespaced_pod_log("logs", namespace, follow=True,
                                             _preload_content=False)
    try:
        first = b""
        for chunk in stream.stream(64):
            first += chunk
            if b"line 2" in first:
                break
        assert b"line 0" in first
    finally:
        stream.release_conn()


def test_pod_log_wrong_container_is_400(core_v1: Any, namespace: str, wait_until: Any) -> None:
    core_v1.create_namespaced_pod(namespace, _pod("logs2"))
    wait_until(lambda: _running(core_v1, namespace, "logs2"), 30, "the pod to run")
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_pod_log("logs2", namespace, container="nope")
    body = json.loads(info.value.body)
    assert (body["code"], body["reason"]) == (400, "BadRequest")
    assert "nope" in body["message"]
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_pod_log("ghost", namespace)
    assert info.value.status == 404


def test_graceful_pod_delete(core_v1: Any, namespace: str, wait_until: Any) -> None:
    core_v1.create_namespaced_pod(namespace, _pod("graceful", grace=20))
    wait_until(lambda: _log_has(core_v1, namespace, "graceful", "line 2"),
               30, "the pod's output")
    deleted = core_v1.delete_namespaced_pod("graceful", namespace)
    # The pod is returned, marked for deletion with the pod's grace period.
    assert deleted.kind == "Pod"
    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 20
    wait_until(gone(core_v1.read_namespaced_pod, "graceful", namespace), 30,
               "the pod to terminate")  # it exits on SIGTERM, well within 20 s


def test_delete_with_zero_grace_is_immediate(core_v1: Any, namespace: str,
                                             wait_until: Any) -> None:
    core_v1.create_namespaced_pod(namespace, _pod("now"))
    core_v1.delete_namespaced_pod("now", namespace, body=client.V1DeleteOptions(
        grace_period_seconds=0))
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_pod("now", namespace)
    assert info.value.status == 404


def test_status_subresource_only_changes_status(apps_v1: Any, namespace: str) -> None:
    body = {"metadata": {"name": "st"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "st"}},
                     "template": {"metadata": {"labels": {"app": "st"}},
                                  "spec": {"containers": [{"name": "c", "image": "x",
                                                           "command": ["true"]}]}}}}
    apps_v1.create_namespaced_deployment(namespace, body)
    # A spec write ignores status ...
    apps_v1.patch_namespaced_deployment("st", namespace, {"status": {"replicas": 42}})
    assert apps_v1.read_namespaced_deployment("st", namespace).status.replicas != 42
    # ... and a status write ignores spec.
    apps_v1.patch_namespaced_deployment_status(
        "st", namespace, {"spec": {"replicas": 5}, "status": {"collisionCount": 3}})
    got = apps_v1.read_namespaced_deployment("st", namespace)
    assert got.spec.replicas == 0 and got.status.collision_count == 3
    assert got.metadata.generation == 1


def test_delete_precondition_uid(core_v1: Any, namespace: str) -> None:
    core_v1.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="pre")))
    with pytest.raises(ApiException) as info:
        core_v1.delete_namespaced_config_map("pre", namespace, body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid="not-the-uid")))
    assert info.value.status == 409
    core_v1.read_namespaced_config_map("pre", namespace)


def test_finalizers_hold_deletion_until_removed(core_v1: Any, namespace: str) -> None:
    core_v1.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="held", finalizers=["example.com/hold"])))
    core_v1.delete_namespaced_config_map("held", namespace)
    held = core_v1.read_namespaced_config_map("held", namespace)
    assert held.metadata.deletion_timestamp is not None
    core_v1.patch_namespaced_config_map("held", namespace, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_config_map("held", namespace)
    assert info.value.status == 404


def test_method_not_allowed_is_405(api_client: Any, namespace: str) -> None:
    response = api_client.rest_client.request(
        "POST", f"{api_client.configuration.host}/api/v1/namespaces/{namespace}/configmaps/x",
        headers={"Content-Type": "application/json",
                 "Authorization": api_client.configuration.api_key["BearerToken"]},
        body={"metadata": {"name": "x"}})
    assert response.status == 405
    response.read()
    body = json.loads(response.data)
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "MethodNotAllowed", 405)
