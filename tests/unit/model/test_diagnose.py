"""Admission refusals fail at once; scheduling and readiness gates are waited out, and said."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from bridge.model import plan
from bridge.model.diagnose import FAIL, WAIT, admission_refusal, diagnose, one_line, pod_waiting
from bridge.model.resources import sidecar_resources
from bridge.model.target import PortMap


def rs_failure(message: str, status: str = "True") -> dict[str, Any]:
    return {"kind": "ReplicaSet", "status": {"conditions": [
        {"type": "ReplicaFailure", "status": status, "reason": "FailedCreate",
         "message": message}]}}


# Messages as kube-apiserver and the controllers word them.
REFUSALS = [
    ('pods "hello-bridge-x-5d9f-abcde" is forbidden: exceeded quota: compute, requested: '
     'limits.cpu=1, used: limits.cpu=2, limited: limits.cpu=2', "ResourceQuota"),
    ('pods "p" is forbidden: failed quota: compute: must specify limits.cpu for: sidecar',
     "ResourceQuota"),
    ('pods "p" is forbidden: maximum cpu usage per Container is 500m, but limit is 1',
     "LimitRange"),
    ('pods "p" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation '
     '!= false (container "app" must set securityContext.allowPrivilegeEscalation=false)',
     "Pod Security"),
    ('admission webhook "validate.kyverno.svc-fail" denied the request: policy require-labels',
     "admission webhook"),
    ('Internal error occurred: failed calling webhook "v.gatekeeper.sh": connection refused',
     "admission webhook unreachable"),
]


@pytest.mark.parametrize(("message", "cause"), REFUSALS)
def test_admission_refusals_fail_now_with_the_reason(message: str, cause: str) -> None:
    v = admission_refusal(rs_failure(message))
    assert v is not None and v.action == FAIL and v.cause == cause
    assert v.message == message


def test_unknown_refusal_still_fails_transient_does_not() -> None:
    v = admission_refusal(rs_failure('pods "p" is forbidden: something new'))
    assert v is not None and v.action == FAIL and "FailedCreate" in v.cause
    assert admission_refusal(rs_failure("Operation cannot be fulfilled on pods: the object "
                                        "has been modified; please apply your changes")) is None
    assert admission_refusal(rs_failure("exceeded quota", status="False")) is None
    assert admission_refusal({"status": {"conditions": "junk"}}) is None


def pod(conditions: list[dict[str, Any]], gates: list[str] | None = None,
        created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if gates:
        spec["readinessGates"] = [{"conditionType": g} for g in gates]
    return {"metadata": {"creationTimestamp": created}, "spec": spec,
            "status": {"conditions": conditions}}


def test_unschedulable_is_waited_out_with_the_schedulers_words() -> None:
    msg = ("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
           "preemption: 0/3 nodes are available")
    v = pod_waiting(pod([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": msg}]))
    assert v is not None and v.action == WAIT and v.cause == "Unschedulable"
    assert v.message == msg


def test_an_unschedulable_proxy_pod_is_no_start_failure() -> None:
    """The proxy's start waits an Unschedulable pod out (shown via pod_waiting) instead of
    failing it at once: on the real cluster the first check failed the swap with `cannot be
    scheduled` before the scheduler's message could be waited out."""
    from bridge.swap.link import pod_problem

    unschedulable = pod([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": "0/1 nodes are available"}])
    unschedulable["status"]["phase"] = "Pending"
    assert pod_problem(unschedulable, "web", past=True) == ""
    assert pod_problem(unschedulable, "web", past=False) == ""
    assert pod_waiting(unschedulable) is not None


def test_readiness_gate_is_named_when_it_is_what_the_pod_waits_for() -> None:
    conds = [{"type": "PodScheduled", "status": "True"},
             {"type": "ContainersReady", "status": "True"},
             {"type": "Ready", "status": "False"},
             {"type": "target-health.elbv2.k8s.aws/k8s-shop-hello", "status": "False"}]
    v = pod_waiting(pod(conds, gates=["target-health.elbv2.k8s.aws/k8s-shop-hello"]))
    assert v is not None and v.cause == "readiness gate"
    assert "target-health.elbv2.k8s.aws/k8s-shop-hello" in v.message
    # containers not ready yet: the gate is not (yet) the reason
    conds[1]["status"] = "False"
    assert pod_waiting(pod(conds, gates=["target-health.elbv2.k8s.aws/k8s-shop-hello"])) is None


def test_diagnose_prefers_a_refusal_then_the_newest_pod() -> None:
    old = pod([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "old"}], created="2026-01-01T00:00:00Z")
    new = pod([{"type": "PodScheduled", "status": "True"}], created="2026-01-01T00:01:00Z")
    assert diagnose([{}], [new, old]) is None
    v = diagnose([rs_failure("exceeded quota: q")], [old])
    assert v is not None and v.action == FAIL


def test_cluster_messages_are_one_short_line() -> None:
    assert one_line("a\nb\x1b[31m c\t") == "a b [31m c"
    assert len(one_line("x" * 5000)) == 400
    assert one_line(None) == ""


# -- resources -----------------------------------------------------------------------------


def limit_range(**container: Any) -> dict[str, Any]:
    return {"kind": "LimitRange", "spec": {"limits": [{"type": "Container", **container},
                                                      {"type": "Pod", "max": {"cpu": "1m"}}]}}


def test_sidecar_defaults_are_small_and_complete() -> None:
    r = sidecar_resources()
    assert r == {"requests": {"cpu": "50m", "memory": "64Mi"},
                 "limits": {"cpu": "1000m", "memory": "256Mi"}}


def test_sidecar_resources_fit_the_limit_range() -> None:
    r = sidecar_resources([limit_range(max={"cpu": "500m", "memory": "128Mi"},
                                       min={"cpu": "100m", "memory": "100Mi"})])
    assert r == {"requests": {"cpu": "100m", "memory": "100Mi"},
                 "limits": {"cpu": "500m", "memory": "128Mi"}}
    r = sidecar_resources([limit_range(maxLimitRequestRatio={"cpu": "4", "memory": "2"})])
    assert r["limits"] == {"cpu": "200m", "memory": "128Mi"}
    assert sidecar_resources([limit_range(max="junk", min={"cpu": "x"})]) == sidecar_resources()


def test_plan_gives_the_proxy_container_sidecar_resources_not_the_apps() -> None:
    original = {"metadata": {"name": "hello", "namespace": "shop"},
                "spec": {"selector": {"matchLabels": {"app": "hello"}},
                         "template": {"metadata": {"labels": {"app": "hello"}}, "spec": {
                             "containers": [{"name": "app", "image": "hello:1", "resources": {
                                 "requests": {"cpu": "4", "memory": "8Gi"},
                                 "limits": {"nvidia.com/gpu": "1"}}}]}}}}
    before = copy.deepcopy(original)
    opts = plan.Options(container="app", ports=(PortMap(8080, 8080, "http"),), session="s1",
                        owner="a@b", authorized_key="ssh-ed25519 AAAA x", image="sc:1")
    (c,) = plan.plan_proxy(original, opts)["spec"]["template"]["spec"]["containers"]
    assert c["resources"] == sidecar_resources()
    fitted = sidecar_resources([limit_range(max={"cpu": "200m"})])
    (c,) = plan.plan_proxy(original, dataclasses.replace(opts, resources=fitted)
                           )["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["cpu"] == "200m"
    assert original == before
