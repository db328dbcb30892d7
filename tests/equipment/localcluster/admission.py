"""Mutating admission of pods, as a service mesh's injector webhook does it (test equipment).

A pod created in a namespace labelled `MESH_LABEL=inject` gets, before defaulting and
validation (where the API server puts the patch of a mutating webhook), what an Istio-like
injector adds to every pod: an init container (Istio's sets up iptables; this one only runs
and exits), a proxy container that keeps running, a volume mounted in it, a label and an
annotation, and variables naming the pod's workload (its ReplicaSet's Deployment), which
differ between a Deployment's pods and bridge's proxy pods. Nothing here redirects traffic.
"""

from __future__ import annotations

import json
from typing import Any

from .store import Store

Obj = dict[str, Any]

MESH_LABEL = "bridge.test/mesh"
MESH_IMAGE = "python:3.11-slim"
INIT = "mesh-init"
PROXY = "mesh-proxy"
VOLUME = "mesh-data"
STATUS_ANNOTATION = "sidecar.mesh.test/status"
TLS_LABEL = "security.mesh.test/tlsMode"


def workload_of(pod: Obj) -> str:
    """The Deployment a pod's ReplicaSet belongs to (its name without the template hash), as
    injectors name the workload; the pod's own name for a bare pod."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "ReplicaSet":
            return str(ref.get("name", "")).rsplit("-", 1)[0]
    return str(pod["metadata"].get("name") or pod["metadata"].get("generateName") or "")


def mutate(store: Store, resource: str, obj: Obj) -> Obj:
    """`obj` as the namespace's mutating admission leaves it (pods only)."""
    if resource != "pods":
        return obj
    ns = store.try_get("namespaces", None, obj["metadata"].get("namespace", ""))
    if ns is None or (ns["metadata"].get("labels") or {}).get(MESH_LABEL) != "inject":
        return obj
    return inject(obj)


def inject(obj: Obj) -> Obj:
    """What the injector adds to pod `obj` (in place; the real cluster's webhook sends it as
    a JSONPatch, tests/equipment/realcluster/mesh_webhook.py)."""
    meta, spec = obj.setdefault("metadata", {}), obj.setdefault("spec", {})
    if any(c.get("name") == PROXY for c in spec.get("containers") or []):
        return obj  # injected once
    workload = workload_of(obj)
    spec["initContainers"] = [{
        "name": INIT, "image": MESH_IMAGE, "command": ["python", "-c", "pass"],
        "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"],
                                             "drop": ["ALL"]}},
    }] + list(spec.get("initContainers") or [])
    spec["containers"] = list(spec.get("containers") or []) + [{
        "name": PROXY, "image": MESH_IMAGE,
        "command": ["python", "-c", "import time; time.sleep(1e9)"],
        "env": [{"name": "MESH_WORKLOAD_NAME", "value": workload},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.name"}}}],
        "volumeMounts": [{"name": VOLUME, "mountPath": "/var/lib/mesh"}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1337,
                            "capabilities": {"drop": ["ALL"]}},
    }]
    spec["volumes"] = list(spec.get("volumes") or []) + [
        {"name": VOLUME, "emptyDir": {"medium": "Memory"}}]
    meta.setdefault("labels", {})[TLS_LABEL] = "mesh"
    meta.setdefault("annotations", {})[STATUS_ANNOTATION] = json.dumps(
        {"initContainers": [INIT], "containers": [PROXY], "volumes": [VOLUME]})
    return obj
