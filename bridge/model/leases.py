"""The lease set of a routed swap, as the agent decides about it: pure functions and tables.

Design: docs/design/cluster-keeps-serving.md, section 8. Used by the router and the lease
phases, not wired yet: nothing in `bridge swap`, `bridge restore` or `bridge status` calls it
today.

- The set itself (one lease a developer: session, owner, kind, header rules, key, ports) is
  the router container's `BRIDGE_LEASES`; its JSON, its checks and the order in which leases
  are offered a request (section 8.4) are the wire contract, in `sidecar.protocol`
  (`decode_leases`, `encode_leases`, `precedence`, `choose`), because the router reads and
  applies them too and imports nothing of bridge. Re-exported here for the agent.
- Each lease's heartbeat is an annotation on the router Deployment, `bridge-k8s.io/beat.<session>`
  = a sequence number, or the tombstone `ended` once its developer left (section 8.3). Whether
  a lease is alive is judged as a lock's session is (`state.liveness`): a change of the value on
  the observer's own monotonic clock, never a timestamp anyone wrote; a tombstone is final.
- The decisions: `prune` (drop stale and ended leases), `join` (add a lease, or refuse naming
  the holder, or watch first), `leave` (the last one out restores), `on_routed_lock` (what the
  next swap or restore does with a routed swap it finds), `own_lease` (which lease is mine:
  session *and* key must agree), and the lease state machine of section 8.6 (`step`).

Everything read here comes from the cluster and may be forged by a neighbour who can edit the
router Deployment (inside the trust boundary once trust.py proved the Deployment is bridge's,
README "Security model"); still, a forged or garbled beat is no sign of life and a lease set
with problems is never acted on (`LeaseSetError`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.model import state
from sidecar import protocol
from sidecar.protocol import Lease, LeaseSetError, choose, decode_leases, encode_leases, precedence

__all__ = [
    "Lease", "LeaseSetError", "choose", "decode_leases", "encode_leases", "precedence",
]

BEAT_PREFIX = state.PREFIX + "beat."
TOMBSTONE = "ended"


# --- beats --------------------------------------------------------------------------------


def beat_key(session: str) -> str:
    """The router Deployment's annotation that carries `session`'s heartbeat."""
    if not isinstance(session, str) or not protocol.SESSION_PATTERN.match(session):
        raise ValueError(f"{protocol.shown(session)} is not a session id bridge writes")
    return BEAT_PREFIX + session


def beat_patch(session: str, seq: int) -> dict[str, object]:
    """Merge patch on the router Deployment: beat number `seq` of `session` (metadata only:
    a beat never rolls the router)."""
    return {"metadata": {"annotations": {beat_key(session): str(seq)}}}


def tombstone_patch(session: str, resource_version: str) -> dict[str, object]:
    """The leaver's last write: its beat becomes the tombstone, conditionally (two leavers at
    once serialize on the resourceVersion, section 8.3)."""
    return {"metadata": {"annotations": {beat_key(session): TOMBSTONE},
                         "resourceVersion": resource_version}}


def beat_of(annotations: Mapping[str, object] | None, session: str) -> str | None:
    """`session`'s beat on the router Deployment: a sequence number (digits, at most
    state.MAX_BEAT), TOMBSTONE, or None when absent or anything else (garbage that never
    changes is no sign of life)."""
    value = (annotations or {}).get(beat_key(session))
    if value == TOMBSTONE:
        return TOMBSTONE
    if isinstance(value, str) and value.isascii() and value.isdigit() \
            and len(value) <= state.MAX_BEAT:
        return value
    return None


def join_annotations(new: Lease, pruned: Sequence[Lease]) -> dict[str, str | None]:
    """The router Deployment's annotations a join writes, in the same patch as the lease set:
    the joiner's first beat, and the beats of the leases it pruned removed."""
    out: dict[str, str | None] = {beat_key(lease.session): None for lease in pruned}
    out[beat_key(new.session)] = "0"
    return out


class Status(enum.Enum):
    """What watching one lease's beat showed (the observer's monotonic clock)."""

    LIVE = "live"  # the beat changed while watched
    WATCHING = "watching"  # not changed yet, watched for less than the TTL: not judged
    STALE = "stale"  # unchanged (or absent) for the TTL: its bridge is gone
    ENDED = "ended"  # its developer left: the tombstone (final, whatever follows)


def status(looks: Sequence[state.Seen], ttl: float) -> Status:
    """A lease's status from the looks at its beat (`Seen.value` as `beat_of` gave it). Once a
    tombstone was seen the lease stays ENDED: a value written after it (a forged or confused
    revival) brings no lease back."""
    if any(look.value == TOMBSTONE for look in looks):
        return Status.ENDED
    seen = state.liveness(looks, ttl)
    if isinstance(seen, state.Alive):
        return Status.LIVE
    if isinstance(seen, state.Stale):
        return Status.STALE
    return Status.WATCHING


_HOLDS = (Status.LIVE, Status.WATCHING)  # a lease that may still have a developer behind it


def _status_of(statuses: Mapping[str, Status], lease: Lease) -> Status:
    # a lease nobody watched yet is not judged: it may be alive
    return statuses.get(lease.session, Status.WATCHING)


# --- the decisions ------------------------------------------------------------------------


def prune(leases: Sequence[Lease], statuses: Mapping[str, Status]) -> tuple[Lease, ...]:
    """The leases to keep: those that may still have a developer (LIVE, or not judged yet),
    in their order (which is their precedence among equals)."""
    return tuple(lease for lease in leases if _status_of(statuses, lease) in _HOLDS)


def own_lease(leases: Sequence[Lease], session: str, key: str) -> Lease | None:
    """This developer's lease: the one with its session id *and* its key. None when absent
    (pruned as stale while this laptop was away: section 8.6, the laptop does not resume).
    LeaseSetError when the set holds its session under another key or its key under another
    session: someone else wrote it, and nothing is done with it."""
    for lease in leases:
        if (lease.session == session) != (lease.key == key):
            raise LeaseSetError(f"lease {lease.session} carries "
                                + ("this session's id with another key" if lease.session == session
                                   else "this session's key under another session id")
                                + "; bridge did not write it that way")
        if lease.session == session:
            return lease
    return None


@dataclass(frozen=True)
class Join:
    """Write `leases` (the pruned set plus the joiner, last) with `annotations`."""

    leases: tuple[Lease, ...]
    pruned: tuple[Lease, ...]
    annotations: dict[str, str | None]


@dataclass(frozen=True)
class JoinRefused:
    """A live lease stands in the way: one line naming its owner; nothing was changed."""

    message: str
    holder: Lease | None


@dataclass(frozen=True)
class WatchFirst:
    """Only leases not judged yet stand in the way: watch their beats (up to the TTL) and
    decide again."""

    sessions: tuple[str, ...]


JoinDecision = Join | JoinRefused | WatchFirst


def _describe(lease: Lease) -> str:
    rules = ", ".join(str(r) for r in lease.rules) or "every request"
    return (f"{state.printable(lease.owner, protocol.MAX_OWNER)} (session {lease.session}, "
            f"{lease.kind} {state.printable(rules, 80)})")


def join(current: Sequence[Lease], new: Lease, statuses: Mapping[str, Status],
         name: str = "the deployment") -> JoinDecision:
    """What a developer joining a routed swap does (section 8.2). Stale and ended leases are
    pruned; the joiner is appended (joins later than those present lose ties, section 8.4).
    Refused: a second plain swap (catch-all), the same steal rules as a live lease (one of the
    two would never get a request), a full set; a session id or key already in the set (never
    re-used: a collision or a copy)."""
    kept = prune(current, statuses)
    pruned = tuple(lease for lease in current if lease not in kept)
    for lease in current:
        if lease.session == new.session or lease.key == new.key:
            return JoinRefused(f"{name} already holds a lease with this session's id or key "
                               f"({_describe(lease)}); nothing was changed", lease)
    same = [lease for lease in kept if new.kind == protocol.KIND_STEAL
            and lease.kind == protocol.KIND_STEAL and lease.rule_set() == new.rule_set()]
    if same:
        holder = same[0]
        if _status_of(statuses, holder) is not Status.LIVE:
            return WatchFirst((holder.session,))
        what = "is swapped by" if new.catch_all else "already routes these headers to"
        hint = ": add --header to take only your requests" if new.catch_all else ""
        return JoinRefused(f"{name} {what} {_describe(holder)}; nothing was changed{hint}",
                           holder)
    if len(kept) >= protocol.MAX_LEASES:
        undecided = tuple(lease.session for lease in kept
                          if _status_of(statuses, lease) is Status.WATCHING)
        if undecided:
            return WatchFirst(undecided)
        return JoinRefused(f"{name} has {len(kept)} live intercepts, the most one routed swap "
                           "takes; nothing was changed", None)
    leases = kept + (new,)
    protocol.check_lease_set(leases)  # cannot fail after the checks above; never write one
    return Join(leases, pruned, join_annotations(new, pruned))


@dataclass(frozen=True)
class LastOut:
    """Nobody else holds a lease: restore everything (section 3.3 hand-back)."""


@dataclass(frozen=True)
class LeaveAlone:
    """Others may still be there: only this lease ends (tombstone); the router and the origin
    keep serving them. `others`: their sessions."""

    others: tuple[str, ...]


LeaveDecision = LastOut | LeaveAlone


def leave(leases: Sequence[Lease], own: str, statuses: Mapping[str, Status]) -> LeaveDecision:
    """What the leaver does after its tombstone was written (conditionally): last out when every
    other lease is ended or stale. A lease not judged yet counts as present (restoring under a
    live developer would take their swap away; a wrong "present" only leaves the router and
    origin serving until the next bridge command, section 8.5). Two leavers at once: the
    second's patch fails (409), its re-read shows the first's tombstone, so exactly one, the
    later, is last."""
    others = tuple(lease.session for lease in leases if lease.session != own
                   and _status_of(statuses, lease) in _HOLDS)
    return LeaveAlone(others) if others else LastOut()


@dataclass(frozen=True)
class JoinExisting:
    """A live lease exists: the new swap joins (it never restores under a live developer)."""


@dataclass(frozen=True)
class RestoreFirst:
    """Every lease is stale or ended (or there is none): the routed swap is repaired exactly
    (the original back, router, origin and lock removed) before anything else."""

    leases: tuple[Lease, ...]


RoutedDecision = JoinExisting | RestoreFirst | WatchFirst


def on_routed_lock(leases: Sequence[Lease], statuses: Mapping[str, Status]) -> RoutedDecision:
    """What the next `bridge swap` (or `bridge restore`) does with a routed swap it found
    (section 8.5): join a live one, repair a dead one, watch the beats of the undecided."""
    if any(_status_of(statuses, lease) is Status.LIVE for lease in leases):
        return JoinExisting()
    undecided = tuple(lease.session for lease in leases
                      if _status_of(statuses, lease) is Status.WATCHING)
    if undecided:
        return WatchFirst(undecided)
    return RestoreFirst(tuple(leases))


# --- the lease state machine (section 8.6) ------------------------------------------------


class State(enum.Enum):
    JOINING = protocol.STATE_JOINING  # in the set; its laptop has not connected yet
    ATTACHING = protocol.STATE_ATTACHING  # connected with its key, forwards registered
    ACTIVE = protocol.STATE_ACTIVE  # takes the requests its rules match
    SUSPECT = protocol.STATE_SUSPECT  # a channel did not open in time: origin until it answers
    AWAY = protocol.STATE_AWAY  # connection gone; may come back within the TTL
    EXPIRED = protocol.STATE_EXPIRED  # away (or never came) for the TTL: key refused
    LEAVING = protocol.STATE_LEAVING  # detached: no new requests, in-flight ones finish
    ENDED = "ENDED"  # tombstone written, others remain (agent's view)
    RESTORED = "RESTORED"  # the last one out restored everything (agent's view)
    GONE = "GONE"  # pruned from the set


class Event(enum.Enum):
    AUTHENTICATED = "authenticated"  # SSH login with the lease's key, forwards registered
    ATTACH = "attach"  # the command, once the local app listens
    OPEN_FAILED = "open failed"  # a channel open timed out or was refused
    ANSWERED = "answered"  # a keepalive reply or a channel that opened
    CONNECTION_LOST = "connection lost"  # SSH closed, or 3 keepalives missed
    TTL_PASSED = "ttl passed"  # AWAY (or JOINING) for the TTL on the router's clock
    DETACH = "detach"  # the command
    DRAINED_OTHERS_ALIVE = "drained, others alive"  # tombstone written; `leave` said LeaveAlone
    DRAINED_LAST_OUT = "drained, last out"  # tombstone written; `leave` said LastOut
    PRUNED = "pruned"  # a join or restore removed it from the set


class Action(enum.Enum):
    NOTHING = "nothing"
    ROUTE = "route"  # matching requests go to this laptop
    TO_ORIGIN = "to origin"  # its requests go to the origin (or the next matching lease)
    START_TTL = "start ttl"  # its requests to the origin; the TTL starts on the router's clock
    REFUSE_KEY = "refuse key"  # the router refuses this key's logins from now on
    DRAIN = "drain"  # no new requests; in-flight ones finish
    RESTORE = "restore"  # the hand-back of section 3.3
    FORGET = "forget"  # nothing of it is left to keep
    REFUSE = "refuse"  # the event makes no sense in this state: refused, state unchanged


S, E, A = State, Event, Action
# Every transition there is; any other (state, event) is refused and changes nothing: the
# events come from the network (a laptop's commands and connections), so an out-of-order one is
# expected input, not a bug. Terminal: EXPIRED, ENDED, RESTORED (only pruning follows), GONE.
TABLE: dict[tuple[State, Event], tuple[State, Action]] = {
    (S.JOINING, E.AUTHENTICATED): (S.ATTACHING, A.NOTHING),
    (S.JOINING, E.TTL_PASSED): (S.EXPIRED, A.REFUSE_KEY),  # killed between join and connect
    (S.JOINING, E.PRUNED): (S.GONE, A.FORGET),
    (S.ATTACHING, E.ATTACH): (S.ACTIVE, A.ROUTE),
    (S.ATTACHING, E.CONNECTION_LOST): (S.AWAY, A.START_TTL),
    (S.ATTACHING, E.DETACH): (S.LEAVING, A.DRAIN),  # the local app never came up
    (S.ACTIVE, E.ANSWERED): (S.ACTIVE, A.NOTHING),
    (S.ACTIVE, E.OPEN_FAILED): (S.SUSPECT, A.TO_ORIGIN),
    (S.ACTIVE, E.CONNECTION_LOST): (S.AWAY, A.START_TTL),
    (S.ACTIVE, E.DETACH): (S.LEAVING, A.DRAIN),
    (S.SUSPECT, E.OPEN_FAILED): (S.SUSPECT, A.TO_ORIGIN),
    (S.SUSPECT, E.ANSWERED): (S.ACTIVE, A.ROUTE),
    (S.SUSPECT, E.CONNECTION_LOST): (S.AWAY, A.START_TTL),
    (S.SUSPECT, E.DETACH): (S.LEAVING, A.DRAIN),  # a command arrived: it is there
    (S.AWAY, E.AUTHENTICATED): (S.ATTACHING, A.NOTHING),  # within the TTL, by construction
    (S.AWAY, E.TTL_PASSED): (S.EXPIRED, A.REFUSE_KEY),
    (S.LEAVING, E.CONNECTION_LOST): (S.LEAVING, A.REFUSE_KEY),  # detached: never back
    (S.LEAVING, E.DRAINED_OTHERS_ALIVE): (S.ENDED, A.REFUSE_KEY),
    (S.LEAVING, E.DRAINED_LAST_OUT): (S.RESTORED, A.RESTORE),
    (S.EXPIRED, E.PRUNED): (S.GONE, A.FORGET),
    (S.ENDED, E.PRUNED): (S.GONE, A.FORGET),
    (S.AWAY, E.PRUNED): (S.GONE, A.FORGET),  # stale by its beat before the router's TTL ran
    (S.LEAVING, E.PRUNED): (S.GONE, A.FORGET),  # its bridge died while draining
}

# The states in which the router sends a lease requests, and accepts its key's logins.
ROUTES = frozenset({S.ACTIVE})
ACCEPTS_LOGIN = frozenset({S.JOINING, S.AWAY})


def step(current: State, event: Event) -> tuple[State, Action]:
    """The next state and what to do; a (state, event) with no row: (current, REFUSE)."""
    return TABLE.get((current, event), (current, Action.REFUSE))


def usable(states: Mapping[str, State]) -> frozenset[str]:
    """The sessions `choose` may send a request to."""
    return frozenset(session for session, st in states.items() if st in ROUTES)
