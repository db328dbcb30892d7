"""A swap session's state, kept as annotations on the original Deployment.

The annotations are the lock against a second swap and what `bridge restore` (or the next
`bridge swap`) reads to repair a session that died. Everything here is pure: encoding,
decoding, and the decision a new swap takes when it finds a lock.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

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

# What a lock bridge wrote looks like. Annotations may have been written by anyone who can edit
# the Deployment: every field is checked before bridge acts on it.
SESSION_FORMAT = re.compile(r"[a-z0-9]{1,20}\Z")  # bridge writes 8 hex digits
MAX_REPLICAS = 10_000  # far above any Deployment bridge could have scaled down
CLOCK_SKEW = 300.0  # seconds a timestamp may lie ahead of this machine's clock (another laptop)
MAX_SHOWN = 120  # characters of an annotation value bridge prints
_EPOCH = dt.datetime.fromtimestamp(0, dt.UTC)


def printable(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` safe to print on a terminal: control characters (ESC, CR, LF, ...) and other
    non-printable characters as escapes, at most `limit` characters (then "...")."""
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    shown = "".join(out)
    return shown if len(shown) <= limit else shown[: max(limit - 3, 0)] + "..."


@dataclass(frozen=True)
class Lock:
    session: str
    owner: str
    replicas: int
    proxy: str
    ports: str  # "8080,9090:9091" as the user sees it
    started_at: dt.datetime
    heartbeat: dt.datetime
    # What is wrong with the annotations this lock was read from (empty for a lock bridge
    # wrote): a lock with problems is never acted on, only reported.
    problems: tuple[str, ...] = field(default=(), compare=False)


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> dt.datetime:
    """An RFC 3339 time in UTC; ValueError for anything else (also for years a UTC conversion
    cannot represent)."""
    if not isinstance(s, str) or len(s) > 64:
        raise ValueError("not a timestamp")
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    t = t if t.tzinfo else t.replace(tzinfo=dt.UTC)
    try:
        return t.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None


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

    A partial or garbled lock (edited by hand, or forged) still counts as a lock, so nobody
    swaps over it silently; what is wrong with it is in `problems`, and bridge acts on no
    field of such a lock. Display fields (owner, ports) are made printable; session and
    proxy are either in bridge's format or named in `problems`.
    """
    if not annotations or SESSION not in annotations:
        return None
    problems: list[str] = []

    def raw(key: str) -> str:
        value = annotations.get(key)
        if value is None:
            problems.append(f"{key} is missing")
            return ""
        return str(value)

    def when(key: str) -> dt.datetime:
        text = raw(key)
        if key not in annotations:
            return _EPOCH
        try:
            return parse_time(text)
        except ValueError:
            problems.append(f"{key}={printable(text, 40)!s} is not a timestamp")
            return _EPOCH

    session = raw(SESSION)
    if not SESSION_FORMAT.match(session):
        problems.append(f"{SESSION}={printable(session, 40)} is not a session id bridge writes")
        session = printable(session, 40)
    owner = raw(OWNER)
    replicas_text = raw(REPLICAS)
    replicas = 1
    if REPLICAS in annotations:
        if replicas_text.isascii() and replicas_text.isdigit() and len(replicas_text) <= 6 \
                and int(replicas_text) <= MAX_REPLICAS:
            replicas = int(replicas_text)
        else:
            problems.append(f"{REPLICAS}={printable(replicas_text, 40)} is not a replica count "
                            f"(0-{MAX_REPLICAS})")
    proxy = raw(PROXY)
    if PROXY in annotations and not _is_proxy_name_for(proxy, session):
        problems.append(f"{PROXY}={printable(proxy, 80)} is not a name bridge gives the proxy "
                        f"of session {session}")
        proxy = printable(proxy, 80)
    ports = annotations.get(PORTS, "")
    started_at = when(STARTED_AT)
    heartbeat = when(HEARTBEAT)
    return Lock(
        session=session,
        owner=printable(owner or "unknown", 80),
        replicas=replicas,
        proxy=proxy,
        ports=printable(str(ports), 80),
        started_at=started_at,
        heartbeat=heartbeat,
        problems=tuple(problems),
    )


def _is_proxy_name_for(proxy: str, session: str) -> bool:
    """A proxy name bridge could have derived for this session (any original name):
    `<name>-bridge-<session>`, a DNS-1123 label of at most 63 characters."""
    return (SESSION_FORMAT.match(session) is not None and len(proxy) <= 63
            and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", proxy) is not None
            and proxy.endswith(f"-bridge-{session}") and len(proxy) > len(f"-bridge-{session}"))


def lock_problems(lock: Lock, now: dt.datetime) -> list[str]:
    """Everything that keeps bridge from acting on `lock`: the fields that were malformed or
    missing, and timestamps in the future (beyond CLOCK_SKEW)."""
    found = list(lock.problems)
    for key, t in ((STARTED_AT, lock.started_at), (HEARTBEAT, lock.heartbeat)):
        if t != _EPOCH and (t - now).total_seconds() > CLOCK_SKEW:
            found.append(f"{key}={format_time(t)} is in the future")
    return found


def fix_by_hand(name: str) -> str:
    """The kubectl command that removes every annotation of bridge's from deployment `name`."""
    return (f"kubectl annotate deployment/{name} " + " ".join(k + "-" for k in KEYS))


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


@dataclass(frozen=True)
class Doubtful:
    """A lock bridge did not write as it stands (forged, hand-edited, or from a clock far
    ahead): neither swapped over nor repaired."""

    lock: Lock
    problems: tuple[str, ...]

    def explain(self, name: str) -> str:
        return (f"deployment/{name} carries a bridge lock that bridge cannot trust ("
                + "; ".join(self.problems) + "); check who set it (kubectl get deployment/"
                f"{name} -o yaml), and if no session is running remove it with: "
                + fix_by_hand(name))


Decision = Proceed | Refuse | RepairFirst | Doubtful


def decide(lock: Lock | None, now: dt.datetime, ttl: float) -> Decision:
    """What a new swap does about the lock it found on the Deployment."""
    if lock is None:
        return Proceed()
    problems = lock_problems(lock, now)
    if problems:
        return Doubtful(lock, tuple(problems))
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
