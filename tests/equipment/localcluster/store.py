"""In-memory object store of the local test cluster: the part of etcd + the generic registry
that every other piece (API server, controllers, kubelet, service proxy) shares.

Resources are named by their key, ``"<group>/<plural>"`` or just ``"<plural>"`` for the core
group: ``pods``, ``services``, ``endpoints``, ``configmaps``, ``secrets``, ``namespaces``,
``apps/deployments``, ``apps/replicasets``. Objects are plain JSON dicts; every call hands out
deep copies, so callers may mutate what they get.

One global resourceVersion counter, as etcd's revision. ``watch`` replays the bounded event
log after a given resourceVersion and then streams live events; a resourceVersion older than
the log gives 410 Expired, as Kubernetes does (``check_since`` tells before a watch starts).
Each event also carries the object as it was before (``prev``), so a watch filtered by a
selector can report objects leaving it as DELETED, as Kubernetes' watch cache does.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import string
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import ApiError, already_exists, conflict, gone, not_found

Obj = dict[str, Any]

CLUSTER_SCOPED = frozenset({"namespaces"})
# Resources whose spec changes bump metadata.generation.
GENERATION_TRACKED = frozenset({"apps/deployments", "apps/replicasets"})
# [realbeh] ... and, for Deployments, annotation changes too (the controller copies them onto
# the ReplicaSets: kubernetes pkg/registry/apps/deployment/strategy.go PrepareForUpdate).
ANNOTATION_GENERATION = frozenset({"apps/deployments"})
EVENT_LOG_SIZE = 10_000
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as apiserver's utilrand


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_NAME_SUFFIX_ALPHABET) for _ in range(n))


@dataclass(frozen=True)
class Event:
    type: str  # ADDED, MODIFIED, DELETED
    resource: str
    object: Obj
    rv: int
    prev: Obj | None = None  # the object before this event (MODIFIED, DELETED)


@dataclass(eq=False)
class _Watcher:
    resource: str
    namespace: str | None
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)


class Store:
    def __init__(self) -> None:
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._rv = 1
        self._log: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)
        self._watchers: set[_Watcher] = set()
        self._compacted_rv = 0  # events at or below this were dropped from the log

    # -- reads -------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def get(self, resource: str, namespace: str | None, name: str) -> Obj:
        obj = self._objects.get(self._key(resource, namespace, name))
        if obj is None:
            raise not_found(resource, name)
        return copy.deepcopy(obj)

    def try_get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        obj = self._objects.get(self._key(resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> tuple[list[Obj], str]:
        """Objects of `resource` (in `namespace`, or all), sorted by namespace/name."""
        items = [
            copy.deepcopy(obj)
            for (res, ns, _), obj in sorted(self._objects.items(), key=lambda kv: kv[0])
            if res == resource
            and (namespace is None or ns == namespace)
            and (predicate is None or predicate(obj))
        ]
        return items, self.resource_version

    # -- writes ------------------------------------------------------------------------

    def create(self, resource: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(100):
                candidate = meta["generateName"] + random_suffix()
                if self._key(resource, meta.get("namespace"), candidate) not in self._objects:
                    meta["name"] = candidate
                    break
        if not meta.get("name"):
            raise ApiError(400, "BadRequest", "name or generateName is required")
        key = self._key(resource, meta.get("namespace"), meta["name"])
        if key in self._objects:
            raise already_exists(resource, meta["name"])
        if resource in CLUSTER_SCOPED:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if resource in GENERATION_TRACKED:
            meta["generation"] = 1
        return self._commit("ADDED", resource, key, obj, None)

    def replace(self, resource: str, obj: Obj, *, status_only: bool = False) -> Obj:
        """Update an object. A metadata.resourceVersion that is set and stale: 409 Conflict.

        `status_only` keeps everything but `.status` as stored (the /status subresource);
        otherwise `.status` is kept as stored unless the caller is a controller that passes
        status_only=False with a status it computed (we keep it simple: status is written too).
        """
        meta = obj.get("metadata", {})
        key = self._key(resource, meta.get("namespace"), meta.get("name", ""))
        current = self._objects.get(key)
        if current is None:
            raise not_found(resource, meta.get("name", ""))
        given_rv = meta.get("resourceVersion")
        if given_rv and given_rv != current["metadata"]["resourceVersion"]:
            raise conflict(resource, meta["name"])
        if status_only:
            new = copy.deepcopy(current)
            new["status"] = copy.deepcopy(obj.get("status", {}))
            if resource in ANNOTATION_GENERATION and "annotations" in meta:
                # [realbeh] a Deployment's /status write may change its annotations (the
                # controller's revision), without a new generation
                new["metadata"]["annotations"] = copy.deepcopy(meta["annotations"])
        else:
            new = copy.deepcopy(obj)
            new_meta = new.setdefault("metadata", {})
            for immutable in ("uid", "creationTimestamp", "namespace", "name"):
                if immutable in current["metadata"]:
                    new_meta[immutable] = current["metadata"][immutable]
            if "deletionTimestamp" in current["metadata"]:
                new_meta.setdefault("deletionTimestamp", current["metadata"]["deletionTimestamp"])
            if resource in GENERATION_TRACKED:
                generation = current["metadata"].get("generation", 1)
                if new.get("spec") != current.get("spec") or (
                        resource in ANNOTATION_GENERATION
                        and (new_meta.get("annotations") or {})
                        != (current["metadata"].get("annotations") or {})):
                    generation += 1
                new_meta["generation"] = generation
        if new == current:
            return copy.deepcopy(current)  # no-op writes do not bump resourceVersion
        return self._commit("MODIFIED", resource, key, new, current)

    def delete(self, resource: str, namespace: str | None, name: str) -> Obj:
        """Remove the object now (graceful pod deletion is the API server's and kubelet's job)."""
        key = self._key(resource, namespace, name)
        obj = self._objects.pop(key, None)
        if obj is None:
            raise not_found(resource, name)
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._publish(Event("DELETED", resource, obj, self._rv, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    # -- watch -------------------------------------------------------------------------

    async def watch(
        self,
        resource: str,
        namespace: str | None = None,
        since: str | None = None,
    ) -> AsyncIterator[Event]:
        """Events after resourceVersion `since` (None or "0": only live events from now)."""
        watcher = _Watcher(resource, namespace)
        backlog: list[Event] = []
        self.check_since(since)
        if since not in (None, "", "0"):
            since_rv = int(since)  # type: ignore[arg-type]
            backlog = [e for e in self._log if e.rv > since_rv and self._matches(watcher, e)]
        self._watchers.add(watcher)
        try:
            for event in backlog:
                yield copy.deepcopy(event)
            last = backlog[-1].rv if backlog else 0
            while True:
                event = await watcher.queue.get()
                if event.rv > last:
                    yield event
        finally:
            self._watchers.discard(watcher)

    def check_since(self, since: str | None) -> None:
        """Raise 410 Expired (or 400 for a malformed one) if a watch could not start at `since`."""
        if since in (None, "", "0"):
            return
        try:
            since_rv = int(since)  # type: ignore[arg-type]
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid resource version: {since!r}") from None
        if since_rv < self._compacted_rv:
            raise gone(f"too old resource version: {since_rv} ({self._rv})")

    # -- internals ---------------------------------------------------------------------

    def _key(self, resource: str, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (resource, "" if resource in CLUSTER_SCOPED else (namespace or ""), name)

    def _commit(self, type_: str, resource: str, key: tuple[str, str, str], obj: Obj,
                prev: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key] = obj
        self._publish(Event(type_, resource, copy.deepcopy(obj), self._rv, copy.deepcopy(prev)))
        return copy.deepcopy(obj)

    def _publish(self, event: Event) -> None:
        if len(self._log) == self._log.maxlen:
            self._compacted_rv = self._log[0].rv
        self._log.append(event)
        for watcher in list(self._watchers):
            if self._matches(watcher, event):
                watcher.queue.put_nowait(copy.deepcopy(event))

    @staticmethod
    def _matches(watcher: _Watcher, event: Event) -> bool:
        if watcher.resource != event.resource:
            return False
        if watcher.namespace is None:
            return True
        return event.object.get("metadata", {}).get("namespace") == watcher.namespace


def dns1123_label_ok(name: str) -> bool:
    allowed = set(string.ascii_lowercase + string.digits + "-")
    return (
        0 < len(name) <= 63
        and set(name) <= allowed
        and name[0].isalnum()
        and name[-1].isalnum()
    )


def dns1123_subdomain_ok(name: str) -> bool:
    return 0 < len(name) <= 253 and all(dns1123_label_ok(p) for p in name.split("."))
