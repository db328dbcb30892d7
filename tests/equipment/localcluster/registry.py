"""Server-side semantics of create / update / patch / delete on top of the store.

This is what Kubernetes' generic registry and per-type strategies do: defaulting, validation,
status handling, name generation, ClusterIP allocation, graceful pod deletion, deletion
propagation. The HTTP layer (apiserver.py) and the controllers both go through it.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import admission
from .config import ClusterConfig
from .defaults import apply_defaults, validate
from .errors import ApiError, already_exists, bad_request, conflict, forbidden, invalid, not_found
from .patch import apply_patch
from .resources import BY_KEY
from .selectors import format_selector, selector_from_label_selector
from .store import Store, now_rfc3339, random_suffix

Obj = dict[str, Any]
NODE_NAME = "bridge-node"
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})
# Fields only the server sets; a client's values are dropped on create.
_SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                "deletionGracePeriodSeconds", "generation", "managedFields", "selfLink")


@dataclass(frozen=True)
class DeleteOptions:
    grace_period: int | None = None
    propagation: str | None = None  # Background, Foreground, Orphan
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    dry_run: bool = False


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    def __init__(self, store: Store, config: ClusterConfig) -> None:
        self.store = store
        self.config = config

    # -- create --------------------------------------------------------------------------

    def create(self, resource: str, namespace: str | None, body: Obj, *,
               dry_run: bool = False) -> Obj:
        r = BY_KEY[resource]
        if not isinstance(body, dict):
            raise bad_request("the body of the request was not a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        self._check_kind(r.kind, r.api_version, obj)
        for key in _SERVER_META:
            meta.pop(key, None)
        if r.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
            self._check_namespace_open(meta["namespace"], resource, meta.get("name", ""))
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(r.qualified_kind, "", [{
                    "type": "Required", "field": "metadata.name",
                    "detail": "name or generateName is required"}])
            meta["name"] = self._generate_name(resource, meta.get("namespace"),
                                               meta["generateName"])
        if resource != "pods":
            obj.pop("status", None)
        else:
            obj["status"] = {}
        obj = admission.mutate(self.store, resource, obj)  # a mesh's injector, if labelled
        obj = apply_defaults(resource, obj)
        validate(resource, obj)
        if self.store.try_get(resource, obj["metadata"].get("namespace"),
                              obj["metadata"]["name"]) is not None:
            raise already_exists(resource, obj["metadata"]["name"])
        if resource == "services":
            self._allocate_cluster_ip(obj)
        if dry_run:
            obj["metadata"].setdefault("creationTimestamp", now_rfc3339())
            return obj
        return self.store.create(resource, obj)

    def _check_kind(self, kind: str, api_version: str, obj: Obj) -> None:
        if obj.get("kind") and obj["kind"] != kind:
            raise bad_request(f"the kind in the data ({obj['kind']}) does not match the "
                              f"expected kind ({kind})")
        if obj.get("apiVersion") and obj["apiVersion"] != api_version:
            raise bad_request(f"the API version in the data ({obj['apiVersion']}) does not "
                              f"match the expected API version ({api_version})")

    def _check_namespace_open(self, namespace: str, resource: str, name: str) -> None:
        ns = self.store.try_get("namespaces", None, namespace)
        if ns is None:
            raise not_found("namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise forbidden(f'{BY_KEY[resource].plural} "{name}" is forbidden: unable to create '
                            f"new content in namespace {namespace} because it is being "
                            "terminated", resource, name)

    def _generate_name(self, resource: str, namespace: str | None, prefix: str) -> str:
        base = prefix[: 63 - 5] if len(prefix) > 58 else prefix
        for _ in range(100):
            candidate = base + random_suffix()
            if self.store.try_get(resource, namespace, candidate) is None:
                return candidate
        raise ApiError(500, "InternalError", "could not generate a unique name")

    def _allocate_cluster_ip(self, svc: Obj) -> None:
        spec = svc["spec"]
        if spec.get("type") == "ExternalName":
            spec.pop("clusterIP", None)
            return
        cidr = self.config.service_cidr
        wanted = spec.get("clusterIP") or (spec.get("clusterIPs") or [""])[0]
        if wanted == "None":
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
        else:
            used = {s["spec"].get("clusterIP") for s in self.store.list("services")[0]}
            if wanted:
                try:
                    ip = ipaddress.ip_address(wanted)
                except ValueError:
                    ip = None
                if ip is None or ip not in cidr:
                    raise invalid("Service", svc["metadata"]["name"], [{
                        "type": "Invalid", "field": "spec.clusterIPs[0]", "value": wanted,
                        "detail": f"failed to allocate IP {wanted}: provided IP is not in the "
                                  "valid range. The range of valid IPs is " + str(cidr)}])
                if wanted in used:
                    raise invalid("Service", svc["metadata"]["name"], [{
                        "type": "Invalid", "field": "spec.clusterIPs", "value": [wanted],
                        "detail": f"failed to allocate IP {wanted}: provided IP is already "
                                  "allocated"}])
            else:
                free = (str(h) for h in cidr.hosts()
                        if h != self.config.kubernetes_service_ip and str(h) not in used)
                wanted = next(free, "")
                if not wanted:
                    raise ApiError(500, "InternalError",
                                   "Internal error occurred: failed to allocate a serviceIP: "
                                   "range is full")
            spec["clusterIP"], spec["clusterIPs"] = wanted, [wanted]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            used_ports = {p.get("nodePort") for s in self.store.list("services")[0]
                          for p in s["spec"].get("ports") or []}
            for port in spec.get("ports") or []:
                if not port.get("nodePort"):
                    port["nodePort"] = next(n for n in range(30000, 32768) if n not in used_ports)
                    used_ports.add(port["nodePort"])

    # -- update / patch ------------------------------------------------------------------

    def update(self, resource: str, namespace: str | None, name: str, body: Obj, *,
               subresource: str | None = None, dry_run: bool = False) -> Obj:
        r = BY_KEY[resource]
        if not isinstance(body, dict):
            raise bad_request("the body of the request was not a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        self._check_kind(r.kind, r.api_version, obj)
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the "
                              f"name on the URL ({name})")
        if r.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        meta["name"] = name
        if r.namespaced:
            meta["namespace"] = namespace
        current = self.store.get(resource, namespace, name)
        if meta.get("resourceVersion") and meta["resourceVersion"] != \
                current["metadata"]["resourceVersion"]:
            raise conflict(resource, name)
        if subresource == "status":
            merged = copy.deepcopy(current)
            merged["status"] = obj.get("status", {})
            merged["metadata"]["resourceVersion"] = meta.get("resourceVersion") or ""
            if dry_run:
                return merged
            return self.store.replace(resource, merged, status_only=True)
        for key in ("uid", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "generation"):
            if key in current["metadata"]:
                meta[key] = current["metadata"][key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        obj = apply_defaults(resource, obj)
        if "status" in current:
            obj["status"] = current["status"]  # spec writes never change status
        if resource == "services":
            self._keep_cluster_ip(obj, current)
        if resource == "namespaces":
            obj["spec"] = current.get("spec", {})
        validate(resource, obj, current)
        if dry_run:
            return obj
        stored = self.store.replace(resource, obj)
        if current["metadata"].get("deletionTimestamp") and not meta.get("finalizers") and \
                resource not in ("pods", "namespaces"):
            return self.store.delete(resource, namespace, name)  # the last finalizer went
        return stored

    def _keep_cluster_ip(self, svc: Obj, current: Obj) -> None:
        spec, old = svc["spec"], current["spec"]
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if not spec.get(key) and old.get(key):
                spec[key] = old[key]
        if spec.get("clusterIP") != old.get("clusterIP"):
            raise invalid("Service", svc["metadata"]["name"], [{
                "type": "Invalid", "field": "spec.clusterIPs[0]",
                "value": spec.get("clusterIP"),
                "detail": "may not change once set"}])
        old_node_ports = {p.get("port"): p.get("nodePort") for p in old.get("ports") or []}
        for port in spec.get("ports") or []:
            if not port.get("nodePort") and old_node_ports.get(port.get("port")):
                port["nodePort"] = old_node_ports[port["port"]]

    def patch(self, resource: str, namespace: str | None, name: str, content_type: str,
              patch: Any, *, subresource: str | None = None, dry_run: bool = False) -> Obj:
        current = self.store.get(resource, namespace, name)
        patched = apply_patch(content_type, current, patch)
        if not isinstance(patched, dict):
            raise bad_request("the patch did not produce an object")
        meta = patched.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the "
                              f"name on the URL ({name})")
        # A patch carries the resourceVersion only if the client put one in it.
        patch_meta = patch.get("metadata") if isinstance(patch, dict) else None
        if not (isinstance(patch_meta, dict) and patch_meta.get("resourceVersion")) and \
                content_type != "application/json-patch+json":
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.update(resource, namespace, name, patched, subresource=subresource,
                           dry_run=dry_run)

    # -- scale subresource ---------------------------------------------------------------

    def get_scale(self, resource: str, namespace: str, name: str) -> Obj:
        obj = self.store.get(resource, namespace, name)
        return scale_of(obj)

    def update_scale(self, resource: str, namespace: str, name: str, scale: Obj, *,
                     dry_run: bool = False) -> Obj:
        if not isinstance(scale, dict):
            raise bad_request("the body of the request was not a JSON object")
        obj = self.store.get(resource, namespace, name)
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        if rv and rv != obj["metadata"]["resourceVersion"]:
            raise conflict(resource, name)
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or replicas < 0:
            raise invalid("Scale.autoscaling", name, [{
                "type": "Invalid", "field": "spec.replicas", "value": replicas,
                "detail": "must be greater than or equal to 0"}])
        obj["spec"]["replicas"] = replicas
        if dry_run:
            return scale_of(obj)
        return scale_of(self.store.replace(resource, obj))

    def patch_scale(self, resource: str, namespace: str, name: str, content_type: str,
                    patch: Any, *, dry_run: bool = False) -> Obj:
        current = self.get_scale(resource, namespace, name)
        patched = apply_patch(content_type, current, patch)
        patch_meta = patch.get("metadata") if isinstance(patch, dict) else None
        if not (isinstance(patch_meta, dict) and patch_meta.get("resourceVersion")):
            patched.setdefault("metadata", {})["resourceVersion"] = ""
        return self.update_scale(resource, namespace, name, patched, dry_run=dry_run)

    # -- delete --------------------------------------------------------------------------

    def delete(self, resource: str, namespace: str | None, name: str,
               options: DeleteOptions) -> tuple[Obj, bool]:
        """Delete (or start deleting) an object. Returns (object, finished)."""
        obj = self.store.get(resource, namespace, name)
        meta = obj["metadata"]
        if options.precondition_uid and options.precondition_uid != meta.get("uid"):
            raise ApiError(409, "Conflict",
                           f"Operation cannot be fulfilled on {BY_KEY[resource].plural} "
                           f'"{name}": Precondition failed: UID in precondition: '
                           f"{options.precondition_uid}, UID in object meta: {meta.get('uid')}")
        if options.precondition_rv and options.precondition_rv != meta.get("resourceVersion"):
            raise conflict(resource, name)
        if resource == "namespaces":
            return self._delete_namespace(obj, options), False
        if options.dry_run:
            return obj, True
        if [f for f in meta.get("finalizers") or [] if f != "foregroundDeletion"]:
            # Finalizers hold the object (marked for deletion) until clients remove them.
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_rfc3339()
                meta["deletionGracePeriodSeconds"] = 0
                obj = self.store.replace(resource, obj)
            return obj, False
        if resource == "pods":
            return self._delete_pod(obj, options)
        if options.propagation == "Orphan":
            self.orphan_dependents(meta["uid"], meta.get("namespace"))
        elif options.propagation == "Foreground" and self.has_dependents(
                meta["uid"], meta.get("namespace")):
            if meta.get("deletionTimestamp"):
                return obj, False
            meta["deletionTimestamp"] = now_rfc3339()
            meta["deletionGracePeriodSeconds"] = 0
            finalizers = meta.setdefault("finalizers", [])
            if "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            return self.store.replace(resource, obj), False
        return self.store.delete(resource, namespace, name), True

    def _delete_pod(self, pod: Obj, options: DeleteOptions) -> tuple[Obj, bool]:
        meta = pod["metadata"]
        grace = options.grace_period
        if grace is None:
            grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed") or not pod.get("spec", {}).get("nodeName"):
            grace = 0
        if grace <= 0:
            return self.store.delete("pods", meta.get("namespace"), meta["name"]), True
        current = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and current is not None and current <= grace:
            return pod, False
        meta["deletionTimestamp"] = rfc3339(datetime.now(UTC) + timedelta(seconds=grace))
        meta["deletionGracePeriodSeconds"] = grace
        meta.pop("resourceVersion", None)
        return self.store.replace("pods", pod), False

    def _delete_namespace(self, ns: Obj, options: DeleteOptions) -> Obj:
        name = ns["metadata"]["name"]
        if name in PROTECTED_NAMESPACES:
            raise forbidden(f'namespaces "{name}" is forbidden: this namespace may not be '
                            "deleted", "namespaces", name)
        if options.dry_run or ns["metadata"].get("deletionTimestamp"):
            return ns
        ns["metadata"]["deletionTimestamp"] = now_rfc3339()
        ns["metadata"]["deletionGracePeriodSeconds"] = 0
        ns.setdefault("status", {})["phase"] = "Terminating"
        ns["metadata"].pop("resourceVersion", None)
        return self.store.replace("namespaces", ns)

    # -- ownership -----------------------------------------------------------------------

    def dependents(self, uid: str, namespace: str | None) -> list[tuple[str, Obj]]:
        out = []
        for key, r in BY_KEY.items():
            if not r.namespaced:
                continue
            for obj in self.store.list(key, namespace)[0]:
                if any(ref.get("uid") == uid
                       for ref in obj["metadata"].get("ownerReferences") or []):
                    out.append((key, obj))
        return out

    def has_dependents(self, uid: str, namespace: str | None) -> bool:
        return bool(self.dependents(uid, namespace))

    def orphan_dependents(self, uid: str, namespace: str | None) -> None:
        for key, obj in self.dependents(uid, namespace):
            refs = obj["metadata"].get("ownerReferences") or []
            obj["metadata"]["ownerReferences"] = [x for x in refs if x.get("uid") != uid]
            if not obj["metadata"]["ownerReferences"]:
                del obj["metadata"]["ownerReferences"]
            obj["metadata"].pop("resourceVersion", None)
            self.store.replace(key, obj)


def scale_of(obj: Obj) -> Obj:
    meta = obj["metadata"]
    reqs = selector_from_label_selector(obj.get("spec", {}).get("selector")) or []
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                          "creationTimestamp") if k in meta},
        "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
        "status": {"replicas": obj.get("status", {}).get("replicas", 0),
                   "selector": format_selector(reqs)},
    }
