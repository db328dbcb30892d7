"""The controller manager: Deployment, ReplicaSet, Endpoints, garbage collector, namespaces.

Each controller is a work queue of (namespace, name) keys fed by store watch events and a
synchronous reconcile function, so one reconcile sees a consistent store. Decisions about
rollouts are pure functions (`rollout_plan`) of the Deployment and its ReplicaSets.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import events
from .errors import ApiError
from .registry import DeleteOptions, Registry
from .resources import BY_KEY
from .selectors import labels_match, selector_from_label_selector
from .store import Store

log = logging.getLogger("test-cluster.controllers")
Obj = dict[str, Any]
Key = tuple[str, str]
HASH_LABEL = "pod-template-hash"
SLICES = "discovery.k8s.io/endpointslices"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "endpointslice-controller.k8s.io"
REVISION = "deployment.kubernetes.io/revision"
_NOT_COPIED = frozenset({REVISION, "deployment.kubernetes.io/revision-history",
                         "deployment.kubernetes.io/desired-replicas",
                         "deployment.kubernetes.io/max-replicas"})
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


# -- pure helpers --------------------------------------------------------------------------

def template_hash(template: Obj, collision_count: int = 0) -> str:
    """A short stable hash of a pod template, in the alphabet Kubernetes uses for names."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(f"{canonical}|{collision_count}".encode(), digest_size=4).digest()
    number = str(int.from_bytes(digest, "big"))
    return "".join(_SAFE[ord(ch) % len(_SAFE)] for ch in number)


def _strip_hash(template: Obj) -> Obj:
    t = copy.deepcopy(template)
    labels = t.get("metadata", {}).get("labels") or {}
    labels.pop(HASH_LABEL, None)
    return t


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


def surge_and_unavailable(deployment: Obj) -> tuple[int, int]:
    spec = deployment["spec"]
    replicas = spec.get("replicas", 1)
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge = scaled_value(rolling.get("maxSurge", "25%"), replicas, True)
    unavailable = scaled_value(rolling.get("maxUnavailable", "25%"), replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def endpoint_slices(svc: Obj, subsets: list[Obj]) -> list[Obj]:
    """A Service's EndpointSlices for its Endpoints' subsets (pure): one IPv4 slice per port
    set, every address an endpoint with `conditions` (ready/serving/terminating) and its
    `targetRef`; a Service without endpoints still has one slice, with none listed."""
    meta = svc["metadata"]
    name, ns = meta["name"], meta["namespace"]
    labels = {**(meta.get("labels") or {}), SERVICE_NAME_LABEL: name, MANAGED_BY: SLICE_MANAGER}
    owner = {"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta.get("uid"),
             "controller": True, "blockOwnerDeletion": True}
    groups: dict[str, tuple[list[Obj], list[Obj]]] = {}
    for subset in subsets:
        ports = subset.get("ports") or []
        key = json.dumps(ports, sort_keys=True)
        eps = groups.setdefault(key, (ports, []))[1]
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in subset.get(field) or []:
                ep: Obj = {"addresses": [a["ip"]], "conditions": {
                    "ready": ready, "serving": ready, "terminating": False}}
                if a.get("nodeName"):
                    ep["nodeName"] = a["nodeName"]
                if a.get("targetRef"):
                    ep["targetRef"] = a["targetRef"]
                eps.append(ep)
    if not groups:
        groups["[]"] = ([], [])
    out = []
    for key, (ports, eps) in sorted(groups.items()):
        digest = hashlib.sha256(f"{ns}/{name}/{key}".encode()).digest()
        suffix = "".join(_SAFE[b % len(_SAFE)] for b in digest[:5])
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": f"{name}-{suffix}", "namespace": ns,
                                 "labels": labels, "ownerReferences": [owner]},
                    "addressType": "IPv4",
                    "endpoints": sorted(eps, key=lambda e: e["addresses"][0]),
                    "ports": ports})
    return out


DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def deletion_cost(pod: Obj) -> int:
    """The pod's controller.kubernetes.io/pod-deletion-cost (0 when absent or not a number):
    among pods otherwise alike, a ReplicaSet scaling down deletes the lower cost first."""
    try:
        return int((pod["metadata"].get("annotations") or {}).get(DELETION_COST, "0"))
    except ValueError:
        return 0


def pod_ready(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def ready_for(pod: Obj, now: datetime) -> float:
    """Seconds the pod has been Ready (its Ready condition's lastTransitionTime)."""
    condition: Obj = next((c for c in pod.get("status", {}).get("conditions") or []
                      if c.get("type") == "Ready"), {})
    since = condition.get("lastTransitionTime")
    if not since:
        return 0.0
    then = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())


def pod_active(pod: Obj) -> bool:
    return (not pod["metadata"].get("deletionTimestamp")
            and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"))


def controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def owner_ref(owner: Obj) -> Obj:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


@dataclass(frozen=True)
class RolloutPlan:
    new_replicas: int  # desired spec.replicas of the new ReplicaSet
    old_replicas: dict[str, int]  # old ReplicaSet name -> desired spec.replicas


def rollout_plan(deployment: Obj, new_rs: Obj, old_rss: list[Obj],
                 old_pods_left: int | None = None) -> RolloutPlan:
    """Next replica counts for a RollingUpdate or Recreate step (pure). `old_pods_left`:
    pods of the old ReplicaSets still present, terminating ones included (Recreate starts
    new pods only once they are all gone)."""
    spec = deployment["spec"]
    replicas = spec.get("replicas", 1)
    new_current = new_rs["spec"].get("replicas", 0)
    old_current = {rs["metadata"]["name"]: rs["spec"].get("replicas", 0) for rs in old_rss}
    if old_pods_left is None:
        old_pods_left = sum(rs.get("status", {}).get("replicas", 0) for rs in old_rss)
    if (spec.get("strategy") or {}).get("type") == "Recreate":
        if any(old_current.values()) or old_pods_left:
            return RolloutPlan(new_current, dict.fromkeys(old_current, 0))
        return RolloutPlan(replicas, old_current)
    if not any(old_current.values()):
        return RolloutPlan(replicas, old_current)
    surge, max_unavailable = surge_and_unavailable(deployment)
    total = new_current + sum(old_current.values())
    new_target = new_current
    if new_current < replicas:
        new_target = min(replicas, new_current + max(0, replicas + surge - total))
    elif new_current > replicas:
        new_target = replicas
    # Old replicas may go as far as availability allows: first the unhealthy ones, then
    # available ones down to replicas - maxUnavailable.
    min_available = replicas - max_unavailable
    new_available = new_rs.get("status", {}).get("availableReplicas", 0)
    new_unavailable = max(0, new_current - new_available)
    oldest_first = sorted(old_rss, key=lambda x: x["metadata"].get("creationTimestamp", ""))
    old_targets = dict(old_current)
    cleanup = max(0, total - min_available - new_unavailable)
    for rs in oldest_first:
        name = rs["metadata"]["name"]
        unhealthy = max(0, old_targets[name] - rs.get("status", {}).get("availableReplicas", 0))
        drop = min(unhealthy, cleanup)
        old_targets[name] -= drop
        cleanup -= drop
    available = new_available + sum(
        min(old_targets[rs["metadata"]["name"]], rs.get("status", {}).get("availableReplicas", 0))
        for rs in old_rss)
    budget = max(0, available - min_available)
    for rs in oldest_first:
        name = rs["metadata"]["name"]
        drop = min(old_targets[name], budget)
        old_targets[name] -= drop
        budget -= drop
    return RolloutPlan(new_target, old_targets)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


_COUNTERS = ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")


def deployment_status(deployment: Obj, new_rs: Obj | None, all_rss: list[Obj],
                      previous: Obj, now: datetime, created_new: bool = False) -> Obj:
    """The Deployment's status from its ReplicaSets (pure). Progressing turns False with
    ProgressDeadlineExceeded when a rollout made no progress for progressDeadlineSeconds."""
    spec = deployment["spec"]
    replicas = spec.get("replicas", 1)
    st = [rs.get("status", {}) for rs in all_rss]
    available = sum(s.get("availableReplicas", 0) for s in st)
    status: Obj = {
        "observedGeneration": deployment["metadata"].get("generation", 1),
        "replicas": sum(s.get("replicas", 0) for s in st),
        "updatedReplicas": (new_rs or {}).get("status", {}).get("replicas", 0),
        "readyReplicas": sum(s.get("readyReplicas", 0) for s in st),
        "availableReplicas": available,
    }
    progressed = created_new or any(status[k] != previous.get(k, 0) for k in _COUNTERS) or \
        status["observedGeneration"] != previous.get("observedGeneration")
    if previous.get("collisionCount"):
        status["collisionCount"] = previous["collisionCount"]
    unavailable = max(0, replicas - available)
    if unavailable:
        status["unavailableReplicas"] = unavailable
    for key in _COUNTERS:
        if not status[key]:
            del status[key]
    _, max_unavailable = surge_and_unavailable(deployment)
    stamp = _format_time(now)
    old_conditions = {c["type"]: c for c in previous.get("conditions") or []}

    def condition(type_: str, ok: bool, reason: str, message: str, touch: bool = False) -> Obj:
        old = old_conditions.get(type_)
        state = "True" if ok else "False"
        if old is not None and old.get("status") == state:
            same = old.get("reason") == reason and old.get("message") == message
            return {"type": type_, "status": state,
                    "lastUpdateTime": old["lastUpdateTime"] if same and not touch else stamp,
                    "lastTransitionTime": old["lastTransitionTime"],
                    "reason": reason, "message": message}
        return {"type": type_, "status": state, "lastUpdateTime": stamp,
                "lastTransitionTime": stamp, "reason": reason, "message": message}

    is_available = available >= replicas - max_unavailable
    conditions = [condition(
        "Available", is_available,
        "MinimumReplicasAvailable" if is_available else "MinimumReplicasUnavailable",
        "Deployment has minimum availability." if is_available
        else "Deployment does not have minimum availability.")]
    if new_rs is not None:
        name = new_rs["metadata"]["name"]
        complete = (status.get("updatedReplicas", 0) == replicas
                    and status.get("replicas", 0) == replicas
                    and new_rs.get("status", {}).get("availableReplicas", 0) >= replicas)
        old = old_conditions.get("Progressing")
        deadline = spec.get("progressDeadlineSeconds")
        last = _parse_time(old.get("lastUpdateTime")) if old else None
        if complete:
            progressing = condition("Progressing", True, "NewReplicaSetAvailable",
                                    f'ReplicaSet "{name}" has successfully progressed.')
        elif created_new:
            progressing = condition("Progressing", True, "NewReplicaSetCreated",
                                    f'Created new replica set "{name}"', touch=True)
        elif not progressed and deadline is not None and last is not None and \
                (now - last).total_seconds() >= deadline and not spec.get("paused"):
            progressing = condition("Progressing", False, "ProgressDeadlineExceeded",
                                    f'ReplicaSet "{name}" has timed out progressing.')
            progressing["lastUpdateTime"] = old["lastUpdateTime"] if old and \
                old.get("reason") == "ProgressDeadlineExceeded" else stamp
        elif not progressed and old is not None and old.get("status") == "False":
            progressing = old  # timed out and still stuck
        else:
            progressing = condition("Progressing", True, "ReplicaSetUpdated",
                                    f'ReplicaSet "{name}" is progressing.', touch=progressed)
        conditions.append(progressing)
    status["conditions"] = sorted(conditions, key=lambda c: c["type"])
    return status


def progress_check_after(deployment: Obj, now: datetime) -> float | None:
    """Seconds until the rollout's progress deadline, if one is running (pure)."""
    deadline = deployment["spec"].get("progressDeadlineSeconds")
    progressing = next((c for c in deployment.get("status", {}).get("conditions") or []
                        if c["type"] == "Progressing"), None)
    if deadline is None or progressing is None or progressing.get("status") != "True" or \
            progressing.get("reason") == "NewReplicaSetAvailable":
        return None
    last = _parse_time(progressing.get("lastUpdateTime"))
    if last is None:
        return None
    return max(0.0, deadline - (now - last).total_seconds())


# -- the machinery -------------------------------------------------------------------------

class WorkQueue:
    def __init__(self, name: str, reconcile: Callable[[str, str], None]) -> None:
        self.name = name
        self.reconcile = reconcile
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: set[Key] = set()

    def add(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def add_later(self, namespace: str, name: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, namespace, name)

    async def run(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            try:
                self.reconcile(*key)
            except ApiError as err:
                if err.code not in (404, 409):
                    log.warning("%s %s/%s: %s", self.name, key[0], key[1], err.message)
                self.add_later(key[0], key[1], 0.05)
            except Exception:
                log.exception("%s %s/%s failed", self.name, *key)
                self.add_later(key[0], key[1], 1.0)


class ControllerManager:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store: Store = registry.store
        self.deployments = WorkQueue("deployment", self.sync_deployment)
        self.replicasets = WorkQueue("replicaset", self.sync_replicaset)
        self.endpoints = WorkQueue("endpoints", self.sync_endpoints)
        self.gc = WorkQueue("garbage-collector", self.sync_orphans)
        self.namespaces = WorkQueue("namespace", self.sync_namespace)
        self._tasks: list[asyncio.Task[None]] = []
        self.static_endpoints: dict[Key, Obj] = {}  # e.g. default/kubernetes

    async def start(self) -> None:
        queues = (self.deployments, self.replicasets, self.endpoints, self.gc, self.namespaces)
        for q in queues:
            self._tasks.append(asyncio.create_task(q.run(), name=f"controller-{q.name}"))
        for resource in ("apps/deployments", "apps/replicasets", "pods", "services",
                         "namespaces"):
            ready = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._watch(resource, ready)))
            await ready.wait()
        for d in self.store.list("apps/deployments")[0]:
            self.deployments.add(d["metadata"]["namespace"], d["metadata"]["name"])
        for s in self.store.list("services")[0]:
            self.endpoints.add(s["metadata"]["namespace"], s["metadata"]["name"])

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _watch(self, resource: str, ready: asyncio.Event) -> None:
        events = self.store.watch(resource, None, self.store.resource_version)
        ready.set()
        async for event in events:
            try:
                self._route(resource, event.type, event.object)
            except Exception:
                log.exception("routing %s event failed", resource)

    def _owner_name(self, obj: Obj, kind: str) -> str | None:
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == kind:
                return str(ref.get("name"))
        return None

    def _route(self, resource: str, type_: str, obj: Obj) -> None:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        if type_ == "DELETED" or meta.get("deletionTimestamp"):
            self.gc.add(ns, meta["uid"])
        if resource == "apps/deployments":
            self.deployments.add(ns, name)
        elif resource == "apps/replicasets":
            self.replicasets.add(ns, name)
            owner = self._owner_name(obj, "Deployment")
            if owner:
                self.deployments.add(ns, owner)
        elif resource == "pods":
            owner = self._owner_name(obj, "ReplicaSet")
            if owner:
                self.replicasets.add(ns, owner)
                rs = self.store.try_get("apps/replicasets", ns, owner)
                deployment = self._owner_name(rs, "Deployment") if rs else None
                if deployment and type_ == "DELETED":
                    self.deployments.add(ns, deployment)  # Recreate waits for pods to go
            elif not any(r.get("controller") for r in meta.get("ownerReferences") or []):
                labels = meta.get("labels") or {}
                for rs in self.store.list("apps/replicasets", ns)[0]:
                    reqs = selector_from_label_selector(rs["spec"].get("selector")) or []
                    if reqs and labels_match(reqs, labels):
                        self.replicasets.add(ns, rs["metadata"]["name"])
            for svc in self.store.list("services", ns)[0]:
                self.endpoints.add(ns, svc["metadata"]["name"])
        elif resource == "services":
            self.endpoints.add(ns, name)
        elif resource == "namespaces":
            self.namespaces.add("", name)

    # -- Deployment ----------------------------------------------------------------------

    def _owned(self, resource: str, owner: Obj) -> list[Obj]:
        uid = owner["metadata"]["uid"]
        return [o for o in self.store.list(resource, owner["metadata"]["namespace"])[0]
                if controller_uid(o) == uid]

    def sync_deployment(self, namespace: str, name: str) -> None:
        d = self.store.try_get("apps/deployments", namespace, name)
        if d is None or d["metadata"].get("deletionTimestamp"):
            return
        rss = self._owned("apps/replicasets", d)
        template = d["spec"]["template"]
        new_rs = next((rs for rs in rss
                       if _strip_hash(rs["spec"]["template"]) == template), None)
        old_rss = [rs for rs in rss if rs is not new_rs]
        revisions = [int(rs["metadata"].get("annotations", {}).get(REVISION, "0") or 0)
                     for rs in rss]
        created_new = new_rs is None
        if new_rs is None:
            new_rs = self._create_replicaset(d, max(revisions, default=0) + 1)
            rss.append(new_rs)
        elif revisions and int(new_rs["metadata"].get("annotations", {}).get(REVISION, "0")
                               or 0) < max(revisions):
            new_rs["metadata"].setdefault("annotations", {})[REVISION] = str(max(revisions) + 1)
            new_rs = self.store.replace("apps/replicasets", new_rs)
            rss = [new_rs] + old_rss
        if not created_new:  # [realbeh] at every sync, paused or not
            new_rs = self._copy_annotations(d, new_rs)
            rss = [new_rs] + old_rss
        if not d["spec"].get("paused"):
            old_uids = {rs["metadata"]["uid"] for rs in old_rss}
            old_pods_left = sum(
                1 for p in self.store.list("pods", namespace)[0]
                if controller_uid(p) in old_uids
                and p.get("status", {}).get("phase") not in ("Succeeded", "Failed"))
            plan = rollout_plan(d, new_rs, old_rss, old_pods_left)
            new_rs = self._set_replicas(new_rs, plan.new_replicas, d)
            for i, rs in enumerate(old_rss):
                old_rss[i] = self._set_replicas(rs, plan.old_replicas[rs["metadata"]["name"]], d)
            self._cleanup_history(d, old_rss)
        revision = new_rs["metadata"].get("annotations", {}).get(REVISION)
        if revision and d["metadata"].get("annotations", {}).get(REVISION) != revision:
            d["metadata"].setdefault("annotations", {})[REVISION] = revision
            d = self.store.replace("apps/deployments", d, status_only=True)  # no new generation
        now = datetime.now(UTC)
        status = deployment_status(d, new_rs, [new_rs] + old_rss, d.get("status") or {}, now,
                                   created_new)
        if status != d.get("status"):
            d["status"] = status
            d = self.store.replace("apps/deployments", d, status_only=True)
        wait = progress_check_after(d, now)
        if wait is not None:
            self.deployments.add_later(namespace, name, wait + 1.0)

    def _copy_annotations(self, d: Obj, rs: Obj) -> Obj:
        """[realbeh] The real controller copies the Deployment's annotations (but its own) onto
        the new ReplicaSet at every sync, and never removes one the Deployment dropped."""
        want = {k: v for k, v in (d["metadata"].get("annotations") or {}).items()
                if k not in _NOT_COPIED and not k.startswith("kubectl.kubernetes.io/last-")}
        have = rs["metadata"].setdefault("annotations", {})
        if all(have.get(k) == v for k, v in want.items()):
            return rs
        have.update(want)
        return self.store.replace("apps/replicasets", rs)

    def _create_replicaset(self, d: Obj, revision: int) -> Obj:
        template = copy.deepcopy(d["spec"]["template"])
        collision = d.get("status", {}).get("collisionCount", 0)
        h = template_hash(template, collision)
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        annotations = {k: v for k, v in (d["metadata"].get("annotations") or {}).items()
                       if k != REVISION and not k.startswith("kubectl.kubernetes.io/last-")}
        annotations.update({
            "deployment.kubernetes.io/desired-replicas": str(d["spec"].get("replicas", 1)),
            "deployment.kubernetes.io/max-replicas": str(
                d["spec"].get("replicas", 1) + surge_and_unavailable(d)[0]),
            REVISION: str(revision),
        })
        rs: Obj = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": f"{d['metadata']['name']}-{h}", "namespace": d["metadata"]["namespace"],
                "labels": dict(template["metadata"]["labels"]),
                "annotations": annotations, "ownerReferences": [owner_ref(d)],
            },
            "spec": {"replicas": 0, "minReadySeconds": d["spec"].get("minReadySeconds", 0),
                     "selector": selector, "template": template},
        }
        try:
            return self.registry.create("apps/replicasets", d["metadata"]["namespace"], rs)
        except ApiError as err:
            if err.code != 409:
                raise
            existing = self.store.get("apps/replicasets", d["metadata"]["namespace"],
                                      rs["metadata"]["name"])
            if controller_uid(existing) == d["metadata"]["uid"]:
                return existing
            d["status"]["collisionCount"] = collision + 1
            self.store.replace("apps/deployments", d, status_only=True)
            raise

    def _set_replicas(self, rs: Obj, replicas: int, d: Obj) -> Obj:
        annotations = rs["metadata"].setdefault("annotations", {})
        desired = str(d["spec"].get("replicas", 1))
        if rs["spec"].get("replicas") == replicas and \
                annotations.get("deployment.kubernetes.io/desired-replicas") == desired:
            return rs
        before = rs["spec"].get("replicas", 0)
        rs["spec"]["replicas"] = replicas
        annotations["deployment.kubernetes.io/desired-replicas"] = desired
        updated = self.store.replace("apps/replicasets", rs)
        if before != replicas:
            direction = "up" if replicas > before else "down"
            events.record(self.store, d, "Normal", "ScalingReplicaSet",
                          f"Scaled {direction} replica set {rs['metadata']['name']} from "
                          f"{before} to {replicas}", "deployment-controller")
        return updated

    def _cleanup_history(self, d: Obj, old_rss: list[Obj]) -> None:
        limit = d["spec"].get("revisionHistoryLimit", 10)
        idle = [rs for rs in old_rss if not rs["spec"].get("replicas")
                and not rs.get("status", {}).get("replicas")]
        idle.sort(key=lambda rs: int(rs["metadata"].get("annotations", {}).get(REVISION, 0)))
        for rs in idle[: max(0, len(idle) - limit)]:
            self.registry.delete("apps/replicasets", rs["metadata"]["namespace"],
                                 rs["metadata"]["name"], DeleteOptions())

    # -- ReplicaSet ----------------------------------------------------------------------

    def sync_replicaset(self, namespace: str, name: str) -> None:
        rs = self.store.try_get("apps/replicasets", namespace, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        self._claim_pods(rs)
        pods = self._owned("pods", rs)
        active = [p for p in pods if pod_active(p)]
        diff = rs["spec"].get("replicas", 1) - len(active)
        if diff > 0:
            for _ in range(diff):
                self._create_pod(rs)
        elif diff < 0:
            def rank(p: Obj) -> tuple[int, int, int, str]:
                # Kubernetes' order: pending, not ready, lower pod-deletion-cost, newer first
                phase = p.get("status", {}).get("phase")
                return (0 if phase == "Pending" else 1, 1 if pod_ready(p) else 0,
                        deletion_cost(p),
                        "".join(chr(255 - ord(c)) for c in
                                p["metadata"].get("creationTimestamp", "")))
            for pod in sorted(active, key=rank)[:-diff]:
                self.registry.delete("pods", namespace, pod["metadata"]["name"],
                                     DeleteOptions())
                events.record(self.store, rs, "Normal", "SuccessfulDelete",
                              f"Deleted pod: {pod['metadata']['name']}",
                              "replicaset-controller")
        pods = self._owned("pods", rs)
        active = [p for p in pods if pod_active(p)]
        ready = [p for p in active if pod_ready(p)]
        now = datetime.now(UTC)
        min_ready = rs["spec"].get("minReadySeconds", 0)
        waits = [ready_for(p, now) for p in ready]
        available = sum(1 for w in waits if w >= min_ready)
        pending = [min_ready - w for w in waits if w < min_ready]
        if pending:
            self.replicasets.add_later(namespace, name, min(pending) + 0.1)
        selector = selector_from_label_selector(rs["spec"].get("selector")) or []
        status: Obj = {
            "replicas": len(active),
            "fullyLabeledReplicas": sum(1 for p in active
                                        if labels_match(selector, p["metadata"].get("labels"))),
            "readyReplicas": len(ready),
            "availableReplicas": available,
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        for key in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"):
            if not status[key]:
                del status[key]
        if status != rs.get("status"):
            rs["status"] = status
            self.store.replace("apps/replicasets", rs, status_only=True)

    def _claim_pods(self, rs: Obj) -> None:
        """Adopt orphan pods the selector matches and release owned pods it no longer
        matches, as Kubernetes' controller ref manager does."""
        selector = selector_from_label_selector(rs["spec"].get("selector")) or []
        uid = rs["metadata"]["uid"]
        for pod in self.store.list("pods", rs["metadata"]["namespace"])[0]:
            meta = pod["metadata"]
            matches = bool(selector) and labels_match(selector, meta.get("labels"))
            owner = controller_uid(pod)
            refs = meta.get("ownerReferences") or []
            if owner is None and matches and pod_active(pod):
                meta["ownerReferences"] = refs + [owner_ref(rs)]
            elif owner == uid and not matches:
                meta["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                if not meta["ownerReferences"]:
                    del meta["ownerReferences"]
            else:
                continue
            self.store.replace("pods", pod)

    def _create_pod(self, rs: Obj) -> Obj:
        template = copy.deepcopy(rs["spec"]["template"])
        meta = copy.deepcopy(template.get("metadata") or {})
        meta.pop("name", None)
        meta["generateName"] = f"{rs['metadata']['name']}-"
        meta["ownerReferences"] = [owner_ref(rs)]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
               "spec": template.get("spec", {})}
        created = self.registry.create("pods", rs["metadata"]["namespace"], pod)
        events.record(self.store, rs, "Normal", "SuccessfulCreate",
                      f"Created pod: {created['metadata']['name']}", "replicaset-controller")
        return created

    # -- Endpoints -----------------------------------------------------------------------

    def sync_endpoints(self, namespace: str, name: str) -> None:
        self._sync_endpoints(namespace, name)
        self._sync_slices(namespace, name)

    def _sync_slices(self, namespace: str, name: str) -> None:
        """The Service's EndpointSlices (discovery.k8s.io/v1), from its Endpoints' subsets,
        as the EndpointSlice controller keeps them (what kube-proxy and bridge read)."""
        svc = self.store.try_get("services", namespace, name)
        ep = self.store.try_get("endpoints", namespace, name)
        desired = {} if svc is None or ep is None else {
            sl["metadata"]["name"]: sl for sl in endpoint_slices(svc, ep.get("subsets") or [])}
        current = {sl["metadata"]["name"]: sl for sl in self.store.list(SLICES, namespace)[0]
                   if (sl["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == name
                   and (sl["metadata"].get("labels") or {}).get(MANAGED_BY) == SLICE_MANAGER}
        for slice_name, sl in desired.items():
            have = current.pop(slice_name, None)
            if have is None:
                self.store.create(SLICES, sl)
            elif (have.get("endpoints"), have.get("ports")) != (sl["endpoints"], sl["ports"]):
                have["endpoints"], have["ports"] = sl["endpoints"], sl["ports"]
                have["metadata"].pop("resourceVersion", None)
                self.store.replace(SLICES, have)
        for slice_name in current:
            with contextlib.suppress(ApiError):
                self.store.delete(SLICES, namespace, slice_name)

    def _sync_endpoints(self, namespace: str, name: str) -> None:
        static = self.static_endpoints.get((namespace, name))
        svc = self.store.try_get("services", namespace, name)
        current = self.store.try_get("endpoints", namespace, name)
        if svc is None:
            if current is not None and static is None:
                self.store.delete("endpoints", namespace, name)
            return
        if static is not None:
            desired_subsets = static.get("subsets", [])
        elif svc["spec"].get("selector") is None:
            return  # endpoints of selector-less services are managed by their users
        else:
            desired_subsets = self._subsets(svc)
        if current is None:
            ep = {"apiVersion": "v1", "kind": "Endpoints",
                  "metadata": {"name": name, "namespace": namespace,
                               "labels": dict(svc["metadata"].get("labels") or {})}}
            if desired_subsets:
                ep["subsets"] = desired_subsets
            self.store.create("endpoints", ep)
            return
        if (current.get("subsets") or []) != desired_subsets:
            if desired_subsets:
                current["subsets"] = desired_subsets
            else:
                current.pop("subsets", None)
            current["metadata"].pop("resourceVersion", None)
            self.store.replace("endpoints", current)

    def _subsets(self, svc: Obj) -> list[Obj]:
        selector = svc["spec"]["selector"] or {}
        ns = svc["metadata"]["namespace"]
        pods = [p for p in self.store.list("pods", ns)[0]
                if selector and all((p["metadata"].get("labels") or {}).get(k) == v
                                    for k, v in selector.items())
                and p.get("status", {}).get("podIP")
                and not p["metadata"].get("deletionTimestamp")
                and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        groups: dict[str, Obj] = {}
        for pod in pods:
            ports = []
            for sp in svc["spec"].get("ports") or []:
                target = sp.get("targetPort", sp.get("port"))
                if isinstance(target, str) and not target.isdigit():
                    resolved = next((cp.get("containerPort")
                                     for c in pod["spec"].get("containers") or []
                                     for cp in c.get("ports") or [] if cp.get("name") == target),
                                    None)
                    if resolved is None:
                        continue
                    target = resolved
                entry = {"port": int(target), "protocol": sp.get("protocol", "TCP")}
                if sp.get("name"):
                    entry["name"] = sp["name"]
                ports.append(entry)
            if not ports and svc["spec"].get("ports"):
                continue
            address = {"ip": pod["status"]["podIP"], "nodeName": pod["spec"].get("nodeName"),
                        "targetRef": {"kind": "Pod", "namespace": ns,
                                      "name": pod["metadata"]["name"],
                                      "uid": pod["metadata"]["uid"]}}
            key = json.dumps(ports, sort_keys=True)
            subset = groups.setdefault(key, {"ports": ports})
            publish = svc["spec"].get("publishNotReadyAddresses")
            field = "addresses" if publish or pod_ready(pod) else "notReadyAddresses"
            subset.setdefault(field, []).append(address)
        subsets: list[Obj] = []
        for subset in groups.values():
            for field in ("addresses", "notReadyAddresses"):
                if field in subset:
                    subset[field].sort(key=lambda a: a["ip"])
            subsets.append({k: subset[k] for k in ("addresses", "notReadyAddresses", "ports")
                            if k in subset})
        return subsets

    # -- garbage collector ---------------------------------------------------------------

    def sync_orphans(self, namespace: str, uid: str) -> None:
        """Delete dependents whose owners are all gone (background propagation), and finish
        foreground deletions whose dependents are gone."""
        live = {o["metadata"]["uid"]: (key, o) for key in BY_KEY
                for o in self.store.list(key, namespace or None)[0]}
        owner = live.get(uid)
        if owner is not None:
            key, obj = owner
            finalizers = obj["metadata"].get("finalizers") or []
            if "foregroundDeletion" in finalizers:
                deps = self.registry.dependents(uid, namespace or None)
                for dep_key, dep in deps:
                    if not dep["metadata"].get("deletionTimestamp"):
                        self.registry.delete(dep_key, namespace, dep["metadata"]["name"],
                                             DeleteOptions(propagation="Foreground"))
                if not self.registry.dependents(uid, namespace or None):
                    self.store.delete(key, namespace or None, obj["metadata"]["name"])
                else:
                    self.gc.add_later(namespace, uid, 0.2)
            return
        for dep_key, dep in self.registry.dependents(uid, namespace or None):
            refs = dep["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") in live for ref in refs):
                continue
            if dep_key == "pods" and dep["metadata"].get("deletionTimestamp"):
                continue
            try:
                self.registry.delete(dep_key, namespace, dep["metadata"]["name"],
                                     DeleteOptions(propagation="Background"))
            except ApiError as err:
                if err.code != 404:
                    raise
        # Dependents of a foreground-deleting owner report back to it.
        for _, obj in live.values():
            if "foregroundDeletion" in (obj["metadata"].get("finalizers") or []):
                self.gc.add(namespace, obj["metadata"]["uid"])

    # -- namespaces ----------------------------------------------------------------------

    def sync_namespace(self, _: str, name: str) -> None:
        ns = self.store.try_get("namespaces", None, name)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        for key, r in BY_KEY.items():
            if not r.namespaced:
                continue
            for obj in self.store.list(key, name)[0]:
                if key == "pods" and obj["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    self.registry.delete(key, name, obj["metadata"]["name"], DeleteOptions())
                except ApiError as err:
                    if err.code != 404:
                        raise
        if any(self.store.list(key, name)[0] for key, r in BY_KEY.items() if r.namespaced):
            self.namespaces.add_later("", name, 0.2)
            return
        self.store.delete("namespaces", None, name)
