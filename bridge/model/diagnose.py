"""Why the proxy pod does not come up: fail now, or keep waiting and say why (pure).

Read from what the cluster reports about the proxy:

- the proxy ReplicaSet's (or Deployment's) `ReplicaFailure` condition, reason `FailedCreate`:
  admission refused the pod (ResourceQuota, LimitRange, Pod Security, a policy webhook such as
  Kyverno or Gatekeeper). Waiting changes nothing: `FAIL` at once with the reason.
- the pod's `PodScheduled=False`: `Unschedulable` is not a failure on clusters that add nodes
  (cluster-autoscaler, Karpenter, GKE Autopilot): `WAIT`, showing the scheduler's message;
  `SchedulingGated` likewise.
- a pod whose containers are ready but one of its `readinessGates` is not True (a load-balancer
  controller registering the pod): `WAIT`, naming the gate.

Every message comes from the cluster and is untrusted: it is flattened to one printable line
and shortened before it is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

FAIL = "fail"
WAIT = "wait"
MAX_MESSAGE = 400

# Refusals that will not pass by waiting a few seconds (the admission chain answered).
_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ResourceQuota", re.compile(r"exceeded quota|failed quota|must specify (limits|requests)")),
    ("LimitRange", re.compile(r"(maximum|minimum) \S+ usage per (Container|Pod)|"
                              r"limit to request ratio|LimitRange")),
    ("Pod Security", re.compile(r"violates PodSecurity")),
    ("admission webhook", re.compile(r"admission webhook \S+ denied the request")),
    ("admission webhook unreachable", re.compile(r"failed calling webhook")),
    ("ValidatingAdmissionPolicy", re.compile(r"ValidatingAdmissionPolicy")),
    ("namespace terminating", re.compile(r"because it is being terminated")),
    ("service account", re.compile(r"error looking up service account|serviceaccount .* not found",
                                   re.I)),
)
# FailedCreate messages that are the server hiccuping, not a refusal.
_TRANSIENT = re.compile(r"the object has been modified|etcdserver|Timeout: request did not "
                        r"complete|TooManyRequests|please try again", re.I)


@dataclass(frozen=True)
class Verdict:
    action: str  # FAIL or WAIT
    cause: str  # short: "ResourceQuota", "Unschedulable", "readiness gate"...
    message: str  # one line, from the cluster, sanitised

    def line(self) -> str:
        return f"{self.cause}: {self.message}" if self.message else self.cause


def one_line(text: Any, limit: int = MAX_MESSAGE) -> str:
    """A cluster-supplied message as one printable line of at most `limit` characters."""
    if not isinstance(text, str):
        return ""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _conditions(obj: Obj) -> list[Obj]:
    status = obj.get("status") if isinstance(obj, dict) else None
    conds = status.get("conditions") if isinstance(status, dict) else None
    return [c for c in conds if isinstance(c, dict)] if isinstance(conds, list) else []


def _condition(obj: Obj, kind: str) -> Obj | None:
    for c in _conditions(obj):
        if c.get("type") == kind:
            return c
    return None


def admission_refusal(owner: Obj) -> Verdict | None:
    """FAIL when a ReplicaSet or Deployment reports it cannot create its pods; None otherwise
    (including a transient server error, which the controller retries)."""
    cond = _condition(owner, "ReplicaFailure")
    if cond is None or cond.get("status") != "True":
        return None
    message = one_line(cond.get("message"))
    if _TRANSIENT.search(message):
        return None
    for cause, pattern in _CAUSES:
        if pattern.search(message):
            return Verdict(FAIL, cause, message)
    reason = one_line(cond.get("reason"), 60) or "FailedCreate"
    return Verdict(FAIL, f"pod creation refused ({reason})", message)


def pod_waiting(pod: Obj) -> Verdict | None:
    """WAIT with what the pod waits for, when that is scheduling or a readiness gate."""
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        reason = one_line(scheduled.get("reason"), 60)
        message = one_line(scheduled.get("message"))
        if reason == "SchedulingGated":
            return Verdict(WAIT, "scheduling gated", message or "the pod has scheduling gates")
        return Verdict(WAIT, "Unschedulable" if reason in ("", "Unschedulable") else reason,
                       message or "no node fits the pod yet")
    gate = blocking_readiness_gate(pod)
    if gate:
        return Verdict(WAIT, "readiness gate",
                       f"the containers are ready; waiting for condition {gate} (set by a "
                       "controller such as a load-balancer controller)")
    return None


def blocking_readiness_gate(pod: Obj) -> str:
    """The first readiness gate that keeps an otherwise ready pod from being Ready, or ""."""
    spec = pod.get("spec") if isinstance(pod, dict) else None
    gates = spec.get("readinessGates") if isinstance(spec, dict) else None
    if not isinstance(gates, list) or not gates:
        return ""
    containers = _condition(pod, "ContainersReady")
    if containers is None or containers.get("status") != "True":
        return ""
    for g in gates:
        kind = g.get("conditionType") if isinstance(g, dict) else None
        if not isinstance(kind, str):
            continue
        cond = _condition(pod, kind)
        if cond is None or cond.get("status") != "True":
            return one_line(kind, 120)
    return ""


def diagnose(owners: Iterable[Obj], pods: Iterable[Obj]) -> Verdict | None:
    """The first FAIL among the proxy's Deployment/ReplicaSets, else what the newest pod waits
    for, else None (nothing to say: it is starting normally)."""
    for owner in owners:
        refusal = admission_refusal(owner)
        if refusal is not None:
            return refusal
    newest = sorted((p for p in pods if isinstance(p, dict)),
                    key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", "")))
    return pod_waiting(newest[-1]) if newest else None


def refusal_message(proxy: str, verdict: Verdict) -> str:
    """The one-line error for a FAIL verdict (the session adds what its restore did: a promise
    here would be said even when the restore failed)."""
    return f"the cluster refused the proxy pod of deployment/{proxy}: {verdict.line()}"
