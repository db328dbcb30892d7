"""A swap session's state: the lock on the original Deployment, the heartbeat on the proxy.

The lock (annotations on the original, written once at swap and removed at restore) is what
stops a second swap and what `bridge restore` (or the next `bridge swap`) reads to repair a
session that died. Nothing writes the original during the session: every annotation change
bumps a Deployment's metadata.generation, and the Deployment controller copies annotations onto
its ReplicaSets. The heartbeat is a sequence number on the session's own proxy Deployment,
bumped every interval.

Whether a session is alive is judged without comparing two machines' clocks: an observer
watches the heartbeat value on its own monotonic clock; a change means alive, no change for the
TTL means stale (an absent proxy or heartbeat is a value like any other, so the window between
the lock and the proxy's creation is not "stale at once").

Everything here is pure: encoding, decoding, and the decisions taken on observations.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PREFIX = "bridge-k8s.io/"
SESSION = PREFIX + "session"
OWNER = PREFIX + "owner"
REPLICAS = PREFIX + "original-replicas"
PROXY = PREFIX + "proxy"
PORTS = PREFIX + "ports"
STARTED_AT = PREFIX + "started-at"
# On the proxy Deployment: a sequence number that changes every beat, and the holder's time
# (shown, never compared). Earlier versions of bridge kept a heartbeat time in the lock on the
# original under the same key; such locks are still read (and the key removed at restore).
HEARTBEAT = PREFIX + "heartbeat"
HEARTBEAT_AT = PREFIX + "heartbeat-at"
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
MAX_BEAT = 20  # digits of a heartbeat sequence number
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
    started_at: dt.datetime  # the holder's clock: shown, never compared
    # the heartbeat time of a lock written by an earlier bridge (on the original); shown only
    heartbeat: dt.datetime | None = None
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
    }


def beat_annotations(seq: int, now: dt.datetime) -> dict[str, str]:
    """The heartbeat as it stands on the proxy Deployment after beat number `seq`."""
    return {HEARTBEAT: str(seq), HEARTBEAT_AT: format_time(now)}


def heartbeat_patch(seq: int, now: dt.datetime) -> dict[str, object]:
    """Merge patch on the proxy Deployment: heartbeat number `seq` (the holder's time for
    display)."""
    return {"metadata": {"annotations": beat_annotations(seq, now)}}


def beat_of(annotations: Mapping[str, str] | None) -> str | None:
    """The heartbeat value on a proxy Deployment: its sequence number, None when absent or not
    in bridge's format (garbage that never changes is no sign of life)."""
    value = (annotations or {}).get(HEARTBEAT)
    if isinstance(value, str) and value.isascii() and value.isdigit() \
            and len(value) <= MAX_BEAT:
        return value
    return None


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
    # a lock of an earlier bridge carries its heartbeat time: read (and checked) for display
    heartbeat = when(HEARTBEAT) if HEARTBEAT in annotations else None
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


def lock_problems(lock: Lock) -> list[str]:
    """Everything that keeps bridge from acting on `lock`: the fields that were malformed or
    missing. Its timestamps are another machine's clock: shown, never judged."""
    return list(lock.problems)


def fix_by_hand(name: str) -> str:
    """The kubectl command that removes every annotation of bridge's from deployment `name`."""
    return (f"kubectl annotate deployment/{name} " + " ".join(k + "-" for k in KEYS))


@dataclass(frozen=True)
class Seen:
    """One look at a session's heartbeat: when (the observer's monotonic clock, seconds) and
    what (`beat_of` the proxy Deployment; None: no proxy Deployment, or no heartbeat on it)."""

    at: float
    value: str | None


@dataclass(frozen=True)
class Alive:
    after: float  # seconds of watching until the heartbeat changed


@dataclass(frozen=True)
class Stale:
    silent_for: float  # seconds the heartbeat was watched without changing (at least the TTL)


@dataclass(frozen=True)
class Watching:
    left: float  # seconds still to watch before the session counts as stale


@dataclass(frozen=True)
class Ended:
    """The session's bridge ran on this machine and that process is gone (this machine's
    record of the session, localstate.py): dead without watching its heartbeat."""

    pid: int


@dataclass(frozen=True)
class Running(Alive):
    """The session's bridge runs on this machine now, as this user (this machine's record of
    the session, local/records.py): the user's own live session, known without watching."""

    pid: int = 0
    terminal: str | None = None  # its controlling terminal (/dev/pts/3), if any
    started: dt.datetime | None = None  # when that process started

    def where(self) -> str:
        """`pid 4242, terminal /dev/pts/3, started 14:05`, for a message."""
        parts = [f"pid {self.pid}"]
        if self.terminal:
            parts.append(f"terminal {printable(self.terminal, 40)}")
        if self.started is not None:
            parts.append(f"started {self.started.strftime('%H:%M')}")
        return ", ".join(parts)


Liveness = Alive | Stale | Watching | Ended


def liveness(seen: Sequence[Seen], ttl: float) -> Liveness:
    """What the looks at one session's heartbeat say: alive as soon as the value changed;
    stale once it stayed the same (absent included) for `ttl` seconds of the observer's own
    clock; until then, keep watching. No timestamp written by anyone is compared."""
    if not seen:
        return Watching(ttl)
    first = seen[0]
    for s in seen[1:]:
        if s.value != first.value:
            return Alive(s.at - first.at)
    watched = seen[-1].at - first.at
    if watched >= ttl:
        return Stale(watched)
    return Watching(ttl - watched)


@dataclass(frozen=True)
class Proceed:
    pass


@dataclass(frozen=True)
class Refuse:
    holder: str
    since: dt.datetime
    session: str
    here: Running | None = None  # the user's own bridge on this machine holds it

    def explain(self, name: str) -> str:
        if self.here is not None:
            return (f"you are already swapping deployment/{name} in another bridge "
                    f"({self.here.where()}); end it first (Ctrl-C there), or run "
                    f"`bridge restore {name}` if it hangs")
        return (f"deployment/{name} is already swapped by {self.holder} since "
                f"{format_time(self.since)} (session {self.session}); ask them to end it, or "
                f"run `bridge restore {name}` if that session is dead")


@dataclass(frozen=True)
class RepairFirst:
    lock: Lock
    evidence: Stale | Ended  # why the session is taken for dead

    def why(self) -> str:
        if isinstance(self.evidence, Ended):
            return (f"whose bridge on this machine (pid {self.evidence.pid}) is no longer "
                    "running")
        return f"whose heartbeat did not change for {describe_age(self.evidence.silent_for)}"


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


def needs_watching(lock: Lock | None) -> bool:
    """Whether deciding about `lock` needs its heartbeat watched (a lock bridge can act on)."""
    return lock is not None and not lock_problems(lock)


def decide(lock: Lock | None, seen: Liveness | None = None) -> Decision:
    """What a new swap does about the lock it found on the Deployment, given what watching its
    session's heartbeat showed (`seen`; only a `Stale` or `Ended` session is repaired)."""
    if lock is None:
        return Proceed()
    problems = lock_problems(lock)
    if problems:
        return Doubtful(lock, tuple(problems))
    if isinstance(seen, (Stale, Ended)):
        return RepairFirst(lock, seen)
    return Refuse(lock.owner, lock.started_at, lock.session,
                  seen if isinstance(seen, Running) else None)


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
