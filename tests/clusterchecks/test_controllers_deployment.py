"""Point 4: Deployment -> ReplicaSet -> Pods, scaling, rolling replacement, status, deletion
propagation, and Endpoints following pod readiness - through the official client."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.clusterchecks.support import gone

pytestmark = pytest.mark.cluster

SLEEP = ["python3", "-c", "import signal, time; signal.signal(signal.SIGTERM, lambda *a: exit(0)); time.sleep(600)"]  # noqa: E501


def deployment(name: str, replicas: int = 1, env: str = "1", ready: bool = True,
               command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main", "image": "example/app:1", "command": command or SLEEP,
        "env": [{"name": "VERSION", "value": env}],
        "ports": [{"containerPort": 8080, "name": "http"}],
    }
    if not ready:
        container["readinessProbe"] = {"exec": {"command": ["false"]}, "periodSeconds": 1}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 2,
                                       "containers": [container]}}},
    }


def owned_by(obj: Any, owner: Any) -> bool:
    return any(ref.uid == owner.metadata.uid and ref.controller
               for ref in obj.metadata.owner_references or [])


def active_pods(core_v1: Any, ns: str, selector: str) -> list[Any]:
    return [p for p in core_v1.list_namespaced_pod(ns, label_selector=selector).items
            if p.metadata.deletion_timestamp is None]


def rollout_done(apps_v1: Any, ns: str, name: str, replicas: int) -> Any:
    d = apps_v1.read_namespaced_deployment(name, ns)
    s = d.status
    if (s.observed_generation == d.metadata.generation and (s.updated_replicas or 0) == replicas
            and (s.replicas or 0) == replicas and (s.available_replicas or 0) == replicas
            and (s.ready_replicas or 0) == replicas):
        return d
    return None


def test_deployment_replicaset_pods_and_status(apps_v1: Any, core_v1: Any, namespace: str,
                                               wait_until: Any) -> None:
    created = apps_v1.create_namespaced_deployment(namespace, deployment("web", 2))
    # Defaults the API server fills in.
    spec = created.spec
    assert spec.strategy.type == "RollingUpdate"
    assert (spec.strategy.rolling_update.max_surge,
            spec.strategy.rolling_update.max_unavailable) == ("25%", "25%")
    assert spec.revision_history_limit == 10 and spec.progress_deadline_seconds == 600
    c = spec.template.spec.containers[0]
    assert c.termination_message_path == "/dev/termination-log"
    assert c.image_pull_policy == "IfNotPresent" and c.ports[0].protocol == "TCP"
    assert created.metadata.generation == 1

    d = wait_until(lambda: rollout_done(apps_v1, namespace, "web", 2), 30, "rollout")
    rss = apps_v1.list_namespaced_replica_set(namespace, label_selector="app=web").items
    assert len(rss) == 1
    rs = rss[0]
    h = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{h}"
    assert rs.spec.selector.match_labels == {"app": "web", "pod-template-hash": h}
    assert rs.spec.template.metadata.labels["pod-template-hash"] == h
    assert owned_by(rs, d) and rs.metadata.owner_references[0].kind == "Deployment"
    assert rs.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert (rs.status.replicas, rs.status.ready_replicas) == (2, 2)
    pods = active_pods(core_v1, namespace, "app=web")
    assert len(pods) == 2
    for pod in pods:
        assert owned_by(pod, rs) and pod.metadata.labels["pod-template-hash"] == h
        assert pod.metadata.name.startswith(f"web-{h}-")
        assert pod.status.phase == "Running"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert d.status.unavailable_replicas is None
    conditions = {c.type: c for c in d.status.conditions}
    assert (conditions["Available"].status, conditions["Available"].reason) == (
        "True", "MinimumReplicasAvailable")
    assert (conditions["Progressing"].status, conditions["Progressing"].reason) == (
        "True", "NewReplicaSetAvailable")


def test_unready_pods_are_counted_unavailable(apps_v1: Any, namespace: str,
                                              wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("slow", 1, ready=False))

    def status() -> Any:
        s = apps_v1.read_namespaced_deployment_status("slow", namespace).status
        return s if s.replicas == 1 and s.unavailable_replicas == 1 else None

    s = wait_until(status, 30, "an unavailable replica")
    assert not s.ready_replicas and not s.available_replicas
    available = next(c for c in s.conditions if c.type == "Available")
    assert (available.status, available.reason) == ("False", "MinimumReplicasUnavailable")


def test_scale_subresource(apps_v1: Any, core_v1: Any, namespace: str, wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("sc", 1))
    scale = apps_v1.read_namespaced_deployment_scale("sc", namespace)
    assert scale.kind == "Scale" and scale.spec.replicas == 1
    assert scale.status.selector == "app=sc"
    apps_v1.patch_namespaced_deployment_scale("sc", namespace, {"spec": {"replicas": 3}})
    wait_until(lambda: rollout_done(apps_v1, namespace, "sc", 3), 30, "scale up to 3")
    assert len(active_pods(core_v1, namespace, "app=sc")) == 3
    scale = apps_v1.read_namespaced_deployment_scale("sc", namespace)
    scale.spec.replicas = 1
    apps_v1.replace_namespaced_deployment_scale("sc", namespace, scale)
    wait_until(lambda: rollout_done(apps_v1, namespace, "sc", 1), 30, "scale down to 1")
    wait_until(lambda: len(core_v1.list_namespaced_pod(namespace, label_selector="app=sc")
                           .items) == 1, 30, "surplus pods to terminate")
    assert apps_v1.read_namespaced_deployment("sc", namespace).metadata.generation == 3


def test_rolling_replacement_on_template_change(apps_v1: Any, core_v1: Any, namespace: str,
                                                wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("roll", 2, env="1"))
    wait_until(lambda: rollout_done(apps_v1, namespace, "roll", 2), 30, "first rollout")
    old_rs = apps_v1.list_namespaced_replica_set(namespace, label_selector="app=roll").items[0]
    apps_v1.patch_namespaced_deployment("roll", namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "main", "env": [{"name": "VERSION", "value": "2"}]}]}}}})
    d = wait_until(lambda: rollout_done(apps_v1, namespace, "roll", 2), 40, "second rollout")
    assert d.metadata.generation == 2 and d.status.observed_generation == 2
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    rss = {rs.metadata.name: rs for rs in
           apps_v1.list_namespaced_replica_set(namespace, label_selector="app=roll").items}
    assert len(rss) == 2
    new_rs = next(rs for name, rs in rss.items() if name != old_rs.metadata.name)
    assert rss[old_rs.metadata.name].spec.replicas == 0
    assert new_rs.spec.replicas == 2
    assert new_rs.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    wait_until(lambda: len(core_v1.list_namespaced_pod(namespace, label_selector="app=roll")
                           .items) == 2, 30, "old pods to go")
    for pod in core_v1.list_namespaced_pod(namespace, label_selector="app=roll").items:
        assert owned_by(pod, new_rs)
        assert pod.spec.containers[0].env[0].value == "2"


def test_deleting_deployment_removes_replicasets_and_pods(apps_v1: Any, core_v1: Any,
                                                          namespace: str,
                                                          wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("gone", 2))
    wait_until(lambda: rollout_done(apps_v1, namespace, "gone", 2), 30, "rollout")
    apps_v1.delete_namespaced_deployment("gone", namespace,
                                         propagation_policy="Background")
    with pytest.raises(ApiException) as info:
        apps_v1.read_namespaced_deployment("gone", namespace)
    assert info.value.status == 404
    wait_until(lambda: not apps_v1.list_namespaced_replica_set(
        namespace, label_selector="app=gone").items, 30, "replicasets to be collected")
    wait_until(lambda: not core_v1.list_namespaced_pod(
        namespace, label_selector="app=gone").items, 30, "pods to be collected")


def test_foreground_deletion_waits_for_dependents(apps_v1: Any, namespace: str,
                                                  wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("fg", 1))
    wait_until(lambda: rollout_done(apps_v1, namespace, "fg", 1), 30, "rollout")
    apps_v1.delete_namespaced_deployment("fg", namespace, propagation_policy="Foreground")
    wait_until(gone(apps_v1.read_namespaced_deployment, "fg", namespace), 30,
               "foreground deletion")
    assert not apps_v1.list_namespaced_replica_set(namespace, label_selector="app=fg").items


def test_orphan_deletion_keeps_pods(apps_v1: Any, core_v1: Any, namespace: str,
                                    wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("orph", 1))
    wait_until(lambda: rollout_done(apps_v1, namespace, "orph", 1), 30, "rollout")
    rs = apps_v1.list_namespaced_replica_set(namespace, label_selector="app=orph").items[0]
    apps_v1.delete_namespaced_deployment("orph", namespace, propagation_policy="Orphan")
    apps_v1.delete_namespaced_replica_set(rs.metadata.name, namespace,
                                          propagation_policy="Orphan")
    pods = core_v1.list_namespaced_pod(namespace, label_selector="app=orph").items
    assert len(pods) == 1 and not pods[0].metadata.owner_references
    assert pods[0].metadata.deletion_timestamp is None


def test_endpoints_list_ready_pods_with_named_target_port(apps_v1: Any, core_v1: Any,
                                                          namespace: str,
                                                          wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("ep", 2))
    apps_v1.create_namespaced_deployment(namespace, {
        **deployment("ep-unready", 1, ready=False),
        "spec": {**deployment("ep-unready", 1, ready=False)["spec"],
                 "selector": {"matchLabels": {"app": "ep", "variant": "unready"}},
                 "template": {**deployment("ep-unready", 1, ready=False)["spec"]["template"],
                              "metadata": {"labels": {"app": "ep", "variant": "unready"}}}}})
    core_v1.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="ep"),
        spec=client.V1ServiceSpec(selector={"app": "ep"}, ports=[
            client.V1ServicePort(name="web", port=80, target_port="http")])))
    wait_until(lambda: rollout_done(apps_v1, namespace, "ep", 2), 30, "rollout")

    def endpoints() -> Any:
        ep = core_v1.read_namespaced_endpoints("ep", namespace)
        subsets = ep.subsets or []
        ready = [a for s in subsets for a in s.addresses or []]
        unready = [a for s in subsets for a in s.not_ready_addresses or []]
        return (ep, ready, unready) if len(ready) == 2 and len(unready) == 1 else None

    ep, ready, unready = wait_until(endpoints, 30, "endpoints")
    pods = {p.status.pod_ip: p for p in core_v1.list_namespaced_pod(
        namespace, label_selector="app=ep").items}
    for address in ready + unready:
        pod = pods[address.ip]
        assert address.target_ref.kind == "Pod" and address.target_ref.name == pod.metadata.name
        assert address.target_ref.uid == pod.metadata.uid
    assert pods[unready[0].ip].metadata.labels.get("variant") == "unready"
    assert [(p.name, p.port, p.protocol) for p in ep.subsets[0].ports] == [("web", 8080, "TCP")]


def test_controllers_record_events(apps_v1: Any, core_v1: Any, kubectl: Any, namespace: str,
                                   wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("evt", 2))
    wait_until(lambda: rollout_done(apps_v1, namespace, "evt", 2), 30, "rollout")
    rs = apps_v1.list_namespaced_replica_set(namespace, label_selector="app=evt").items[0]
    found = core_v1.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=Deployment,involvedObject.name=evt")
    messages = [(e.reason, e.message, e.type) for e in found.items]
    assert ("ScalingReplicaSet", f"Scaled up replica set {rs.metadata.name} from 0 to 2",
            "Normal") in messages
    created = core_v1.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={rs.metadata.name}").items
    assert sorted(e.reason for e in created) == ["SuccessfulCreate", "SuccessfulCreate"]
    out = kubectl("describe", "deployment", "evt", "-n", namespace)
    assert "ScalingReplicaSet" in out and "deployment-controller" in out


def test_replicaset_adopts_matching_orphans_and_releases_relabelled_pods(
        apps_v1: Any, core_v1: Any, namespace: str, wait_until: Any) -> None:
    apps_v1.create_namespaced_deployment(namespace, deployment("adopt", 1))
    wait_until(lambda: rollout_done(apps_v1, namespace, "adopt", 1), 30, "rollout")
    rs = apps_v1.list_namespaced_replica_set(namespace, label_selector="app=adopt").items[0]
    pod = core_v1.list_namespaced_pod(namespace, label_selector="app=adopt").items[0]
    # Relabelled out of the selector: released (no owner) and replaced.
    core_v1.patch_namespaced_pod(pod.metadata.name, namespace,
                                 {"metadata": {"labels": {"app": "elsewhere"}}})
    wait_until(lambda: not core_v1.read_namespaced_pod(pod.metadata.name, namespace)
               .metadata.owner_references, 30, "the pod to be released")
    wait_until(lambda: len(active_pods(core_v1, namespace, "app=adopt")) == 1, 30,
               "a replacement pod")
    # Labelled back: adopted again, so one surplus pod goes.
    core_v1.patch_namespaced_pod(pod.metadata.name, namespace,
                                 {"metadata": {"labels": {"app": "adopt"}}})
    wait_until(lambda: len(active_pods(core_v1, namespace, "app=adopt")) == 1
               and all(owned_by(p, rs) for p in active_pods(core_v1, namespace, "app=adopt")),
               30, "adoption and scale-down to one pod")


def test_progress_deadline_exceeded(apps_v1: Any, kubectl: Any, namespace: str,
                                    wait_until: Any) -> None:
    body = deployment("stuck", 1, ready=False)
    body["spec"]["progressDeadlineSeconds"] = 2
    apps_v1.create_namespaced_deployment(namespace, body)

    def timed_out() -> Any:
        conditions = apps_v1.read_namespaced_deployment("stuck", namespace).status.conditions
        c = next((c for c in conditions or [] if c.type == "Progressing"), None)
        return c if c is not None and c.status == "False" else None

    c = wait_until(timed_out, 30, "the progress deadline to pass")
    assert c.reason == "ProgressDeadlineExceeded"
    assert c.message.endswith("has timed out progressing.")
    result = kubectl.run("rollout", "status", "deployment/stuck", "-n", namespace,
                         "--timeout=30s", check=False)
    assert result.returncode != 0
    assert 'deployment "stuck" exceeded its progress deadline' in result.stderr


def test_min_ready_seconds_delays_availability(apps_v1: Any, namespace: str,
                                               wait_until: Any) -> None:
    from kubernetes import watch
    start = apps_v1.list_namespaced_deployment(namespace).metadata.resource_version
    body = deployment("patient", 1)
    body["spec"]["minReadySeconds"] = 2
    apps_v1.create_namespaced_deployment(namespace, body)
    seen = []
    for event in watch.Watch().stream(apps_v1.list_namespaced_deployment, namespace,
                                      resource_version=start, timeout_seconds=30):
        s = event["object"].status
        seen.append((s.ready_replicas or 0, s.available_replicas or 0))
        if seen[-1] == (1, 1):
            break
    assert (1, 0) in seen  # Ready, but not yet for minReadySeconds
    assert seen[-1] == (1, 1)


def test_recreate_strategy_replaces_all_pods_after_old_ones_are_gone(
        apps_v1: Any, core_v1: Any, namespace: str, wait_until: Any) -> None:
    from kubernetes import watch
    body = deployment("rec", 2)
    body["spec"]["strategy"] = {"type": "Recreate"}
    apps_v1.create_namespaced_deployment(namespace, body)
    wait_until(lambda: rollout_done(apps_v1, namespace, "rec", 2), 30, "first rollout")
    start = core_v1.list_namespaced_pod(namespace).metadata.resource_version
    old = {p.metadata.name for p in core_v1.list_namespaced_pod(namespace,
                                                                label_selector="app=rec").items}
    apps_v1.patch_namespaced_deployment("rec", namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "main", "env": [{"name": "VERSION", "value": "2"}]}]}}}})
    live: set[str] = set(old)
    overlap = False
    for event in watch.Watch().stream(core_v1.list_namespaced_pod, namespace,
                                      label_selector="app=rec", resource_version=start,
                                      timeout_seconds=40):
        name = event["object"].metadata.name
        if event["type"] == "DELETED":
            live.discard(name)
        else:
            live.add(name)
        if live - old and live & old:
            overlap = True
        if len(live - old) == 2 and not live & old:
            break
    assert not overlap, "a new pod existed while an old one was still there"
    wait_until(lambda: rollout_done(apps_v1, namespace, "rec", 2), 30, "second rollout")


def test_annotations_bump_the_generation_and_are_copied_onto_the_replicaset(
        apps_v1: Any, namespace: str, wait_until: Any) -> None:
    """As Kubernetes does (deployment strategy PrepareForUpdate; the controller's
    getNewReplicaSet): a Deployment's annotation change is a new generation, the controller
    copies its annotations onto the current ReplicaSet at every sync and never removes one the
    Deployment dropped; its own revision annotation (a /status write) is no new generation."""
    apps_v1.create_namespaced_deployment(namespace, deployment("ann", 1))
    d = wait_until(lambda: rollout_done(apps_v1, namespace, "ann", 1), 30, "rollout")
    assert d.metadata.generation == 1 and d.metadata.annotations[
        "deployment.kubernetes.io/revision"] == "1"
    apps_v1.patch_namespaced_deployment("ann", namespace,
                                        {"metadata": {"annotations": {"example.com/x": "1"}}})
    assert apps_v1.read_namespaced_deployment("ann", namespace).metadata.generation == 2

    def copied(value: str | None) -> Any:
        rss = apps_v1.list_namespaced_replica_set(namespace, label_selector="app=ann").items
        return len(rss) == 1 and (rss[0].metadata.annotations or {}).get(
            "example.com/x") == value and rss[0]

    wait_until(lambda: copied("1"), 30, "the annotation copied onto the ReplicaSet")
    apps_v1.patch_namespaced_deployment("ann", namespace,
                                        {"metadata": {"annotations": {"example.com/x": None}}})
    d = wait_until(lambda: rollout_done(apps_v1, namespace, "ann", 1), 30, "observed")
    assert d.metadata.generation == 3
    assert copied("1")  # the copy stays
