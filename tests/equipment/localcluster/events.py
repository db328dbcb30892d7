"""Core v1 Events, as controllers and the kubelet record them (`kubectl describe`, `get events`).

Repeated events for the same object and reason are folded into one with a count, as
Kubernetes' event recorder does.
"""

from __future__ import annotations

from typing import Any

from .store import Store, now_rfc3339, random_suffix

Obj = dict[str, Any]


def record(store: Store, obj: Obj, type_: str, reason: str, message: str,
           component: str) -> None:
    """Record (or count again) an event about `obj`. `type_` is Normal or Warning."""
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    involved = {"kind": obj.get("kind", ""), "namespace": namespace,
                "name": meta.get("name", ""), "uid": meta.get("uid", ""),
                "apiVersion": obj.get("apiVersion", ""),
                "resourceVersion": meta.get("resourceVersion", "")}
    now = now_rfc3339()
    for event in store.list("events", namespace)[0]:
        ref = event.get("involvedObject", {})
        if (ref.get("uid"), event.get("reason"), event.get("message")) == (
                involved["uid"], reason, message):
            event["count"] = event.get("count", 1) + 1
            event["lastTimestamp"] = now
            event["metadata"].pop("resourceVersion", None)
            store.replace("events", event)
            return
    store.create("events", {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{involved['name']}.{random_suffix(10)}", "namespace": namespace},
        "involvedObject": involved, "reason": reason, "message": message, "type": type_,
        "source": {"component": component}, "firstTimestamp": now, "lastTimestamp": now,
        "count": 1, "reportingComponent": component, "reportingInstance": "",
    })
