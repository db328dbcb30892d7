"""A swap session's state, kept as annotations on the original Deployment.

The annotations are the lock against a second swap and what `bridge restore` (or the next
`bridge swap`) reads to repair a session that died. Everything here is pure: encoding,
decoding, and the decision a new swap takes when it finds a lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "bridge-k8s.io/"
SESSION = PREFIX + "session"
OWNER = PREFIX + "owner"
REPLICAS = PREFIX + "original-replicas"
PROXY = PREFIX + "proxy"
PORTS = PREFIX + "ports"
STARTED_AT = PREFIX + "started-at"
HEARTBEAT = PREFIX + "heartbeat"
KEYS = (SESSION, OWNER, REPLICAS, PROXY, PORTS, STARTED_AT, HEARTBEAT)

# Labels on what bridge creates.
SESSION_LABEL = PREFIX + "session"  # on the proxy Deployment, its selector and its pods
PROXY_FOR_LABEL = PREFIX + "proxy-for"  # on the proxy Deployment: the original's name
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "bridge"

DEFAULT_HEARTBEAT_INTERVAL = 10.0
DEFAULT_HEARTBEAT_TTL = 60.0


@dataclass(frozen=True)
class Lock:
    session: str
    owner: str
    replicas: int
    proxy: str
    ports: str  # "8080,9090:9091" as the user sees it
    started_at: dt.datetime
    heartbeat: dt.datetime


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def encode(lock: Lock) -> dict[str, str]:
    return {
        SESSION: lock.session,
        OWNER: lock.owner,
        REPLICAS: str(lock.replicas),
        PROXY: lock.proxy,
        PORTS: lock.ports,
        STARTED_AT: format_time(lock.started_at),
        HEARTBEAT: format_time(lock.heartbeat),
    }


def heartbeat_patch(now: dt.datetime, resource_version: str | None = None) -> dict[str, object]:
    """Merge patch refreshing the heartbeat; with a resourceVersion it fails (409) if the
    Deployment changed since it was read (so it never lands on a lock that is not ours)."""
    meta: dict[str, object] = {"annotations": {HEARTBEAT: format_time(now)}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"metadata": meta}


def lock_patch(lock: Lock, resource_version: str | None = None) -> dict[str, object]:
    """Merge patch taking the lock; with a resourceVersion it fails (409) if someone was faster."""
    meta: dict[str, object] = {"annotations": encode(lock)}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"metadata": meta}


def clear_patch(resource_version: str | None = None) -> dict[str, object]:
    """Merge patch removing every annotation of ours; with a resourceVersion it fails (409) if
    the Deployment changed since it was read."""
    meta: dict[str, object] = {"annotations": {k: None for k in KEYS}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"metadata": meta}


def decode(annotations: Mapping[str, str] | None) -> Lock | None:
    """The lock in these annotations, or None when there is none.

    A partial or garbled lock (someone edited it by hand) still counts as a lock, with
    conservative defaults, so that nobody swaps over it silently.
    """
    if not annotations or SESSION not in annotations:
        return None
    epoch = dt.datetime.fromtimestamp(0, dt.UTC)

    def when(key: str) -> dt.datetime:
        try:
            return parse_time(annotations[key])
        except (KeyError, ValueError):
            return epoch

    try:
        replicas = int(annotations.get(REPLICAS, "1"))
    except ValueError:
        replicas = 1
    return Lock(
        session=annotations[SESSION],
        owner=annotations.get(OWNER, "unknown"),
        replicas=max(replicas, 0),
        proxy=annotations.get(PROXY, ""),
        ports=annotations.get(PORTS, ""),
        started_at=when(STARTED_AT),
        heartbeat=when(HEARTBEAT),
    )


def is_stale(now: dt.datetime, heartbeat: dt.datetime, ttl: float) -> bool:
    return (now - heartbeat).total_seconds() > ttl


@dataclass(frozen=True)
class Proceed:
    pass


@dataclass(frozen=True)
class Refuse:
    holder: str
    since: dt.datetime
    session: str


@dataclass(frozen=True)
class RepairFirst:
    lock: Lock
    silent_for: float  # seconds since the last heartbeat


Decision = Proceed | Refuse | RepairFirst


def decide(lock: Lock | None, now: dt.datetime, ttl: float) -> Decision:
    """What a new swap does about the lock it found on the Deployment."""
    if lock is None:
        return Proceed()
    if is_stale(now, lock.heartbeat, ttl):
        return RepairFirst(lock, (now - lock.heartbeat).total_seconds())
    return Refuse(lock.owner, lock.started_at, lock.session)


def describe_age(seconds: float) -> str:
    """kubectl-style short age: 45s, 3m12s, 2h5m, 3d4h."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"
