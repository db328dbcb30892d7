"""Server-side printing: `meta.k8s.io/v1` Table responses, as `kubectl get` asks for them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .resources import Resource

Obj = dict[str, Any]
Column = tuple[str, str, str, Callable[[Obj], Any], int]  # name, type, description, cell, prio


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def age(obj: Obj) -> str:
    return _since(obj.get("metadata", {}).get("creationTimestamp"))


def _since(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600 * 2:
        return f"{seconds // 60}m"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _pod_status(pod: Obj) -> str:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status", {})
    reason = status.get("reason") or status.get("phase", "Pending")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    return str(reason)


def _pod_ready(pod: Obj) -> str:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    total = len(pod.get("spec", {}).get("containers") or [])
    return f"{sum(1 for c in statuses if c.get('ready'))}/{total}"


def _ports(svc: Obj) -> str:
    ports = svc.get("spec", {}).get("ports") or []
    out = []
    for p in ports:
        text = f"{p.get('port')}"
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        out.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _endpoints(ep: Obj) -> str:
    out = []
    for subset in ep.get("subsets") or []:
        for a in subset.get("addresses") or []:
            for p in subset.get("ports") or []:
                out.append(f"{a.get('ip')}:{p.get('port')}")
    return ",".join(out[:3]) + (" + more..." if len(out) > 3 else "") if out else "<none>"


def _selector(obj: Obj) -> str:
    sel = obj.get("spec", {}).get("selector") or {}
    labels = sel.get("matchLabels", sel) if isinstance(sel, dict) else {}
    return ",".join(f"{k}={v}" for k, v in labels.items() if isinstance(v, str)) or "<none>"


def _readiness_gates(pod: Obj) -> str:
    """`TRUE/ALL` of the pod's readiness gates (kubectl's printPod), `<none>` without any."""
    gates = [g.get("conditionType") for g in pod.get("spec", {}).get("readinessGates") or []
             if isinstance(g, dict)]
    if not gates:
        return "<none>"
    status: dict[Any, Any] = {}
    for c in pod.get("status", {}).get("conditions") or []:
        if isinstance(c, dict):
            status.setdefault(c.get("type"), c.get("status"))  # the first of a type counts
    return f"{sum(1 for g in gates if status.get(g) == 'True')}/{len(gates)}"


def _name(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


_NAME: Column = ("Name", "string", "Name must be unique within a namespace.", _name, 0)
_AGE: Column = ("Age", "string", "CreationTimestamp is a timestamp.", age, 0)

COLUMNS: dict[str, list[Column]] = {
    "pods": [
        _NAME,
        ("Ready", "string", "The aggregate readiness state of this pod.", _pod_ready, 0),
        ("Status", "string", "The aggregate status of the containers in this pod.",
         _pod_status, 0),
        ("Restarts", "string", "The number of times the containers in this pod have been "
         "restarted.", lambda p: str(sum(c.get("restartCount", 0) for c in
                                         p.get("status", {}).get("containerStatuses") or [])),
         0),
        _AGE,
        ("IP", "string", "IP address allocated to the pod.",
         lambda p: p.get("status", {}).get("podIP") or "<none>", 1),
        ("Node", "string", "Name of the Node.",
         lambda p: p.get("spec", {}).get("nodeName") or "<none>", 1),
        ("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts "
         "other pods on the node.",
         lambda p: p.get("status", {}).get("nominatedNodeName") or "<none>", 1),
        ("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for "
         "pod readiness.", _readiness_gates, 1),
    ],
    "apps/deployments": [
        _NAME,
        ("Ready", "string", "Number of the pod with ready state",
         lambda d: f"{d.get('status', {}).get('readyReplicas', 0)}/"
                   f"{d.get('spec', {}).get('replicas', 0)}", 0),
        ("Up-to-date", "integer", "Total number of non-terminated pods targeted by this "
         "deployment that have the desired template spec.",
         lambda d: d.get("status", {}).get("updatedReplicas", 0), 0),
        ("Available", "integer", "Total number of available pods (ready for at least "
         "minReadySeconds) targeted by this deployment.",
         lambda d: d.get("status", {}).get("availableReplicas", 0), 0),
        _AGE,
        ("Selector", "string", "Label selector.", _selector, 1),
    ],
    "apps/replicasets": [
        _NAME,
        ("Desired", "integer", "Number of desired pods.",
         lambda r: r.get("spec", {}).get("replicas", 0), 0),
        ("Current", "integer", "Number of actual replicas.",
         lambda r: r.get("status", {}).get("replicas", 0), 0),
        ("Ready", "integer", "The number of ready replicas for this replica set.",
         lambda r: r.get("status", {}).get("readyReplicas", 0), 0),
        _AGE,
    ],
    "services": [
        _NAME,
        ("Type", "string", "The type of the service.",
         lambda s: s.get("spec", {}).get("type", ""), 0),
        ("Cluster-IP", "string", "The IP address of the service.",
         lambda s: s.get("spec", {}).get("clusterIP") or "<none>", 0),
        ("External-IP", "string", "The external IP addresses.", lambda s: "<none>", 0),
        ("Port(s)", "string", "The ports of the service.", _ports, 0),
        _AGE,
        ("Selector", "string", "The label selector of the service.", _selector, 1),
    ],
    "endpoints": [
        _NAME,
        ("Endpoints", "string", "Endpoints of the service.", _endpoints, 0),
        _AGE,
    ],
    "configmaps": [
        _NAME,
        ("Data", "integer", "Number of data items.",
         lambda c: len(c.get("data") or {}) + len(c.get("binaryData") or {}), 0),
        _AGE,
    ],
    "secrets": [
        _NAME,
        ("Type", "string", "The type of the secret.", lambda s: s.get("type", ""), 0),
        ("Data", "integer", "Number of data items.", lambda s: len(s.get("data") or {}), 0),
        _AGE,
    ],
    "events": [
        ("Last Seen", "string", "Time since the event was last seen.",
         lambda e: _since(e.get("lastTimestamp") or e["metadata"].get("creationTimestamp")), 0),
        ("Type", "string", "Normal or Warning.", lambda e: e.get("type", ""), 0),
        ("Reason", "string", "Why the event happened.", lambda e: e.get("reason", ""), 0),
        ("Object", "string", "The object the event is about.",
         lambda e: f"{e.get('involvedObject', {}).get('kind', '').lower()}/"
                   f"{e.get('involvedObject', {}).get('name', '')}", 0),
        ("Message", "string", "What happened.", lambda e: e.get("message", ""), 0),
    ],
    "namespaces": [
        _NAME,
        ("Status", "string", "The status of the namespace.",
         lambda n: n.get("status", {}).get("phase", ""), 0),
        _AGE,
    ],
}


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {})}


def table(r: Resource, items: list[Obj], rv: str, query: Mapping[str, str]) -> Obj:
    columns = COLUMNS.get(r.key, [_NAME, _AGE])
    include = query.get("includeObject", "Metadata")
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": [
            {"name": name, "type": type_, "format": "name" if name == "Name" else "",
             "description": desc, "priority": prio}
            for name, type_, desc, _, prio in columns
        ],
        "rows": [
            {"cells": [cell(obj) for _, _, _, cell, _ in columns],
             "object": _row_object(obj, include)}
            for obj in items
        ],
    }
