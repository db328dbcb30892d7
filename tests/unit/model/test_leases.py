"""The lease set of a routed swap (design section 8), as a specification: beats and their
judgement, prune, join, leave and the last one out, the next swap's decision on a routed swap
it finds, which lease is mine, and the lease state machine. The wire form and precedence are
the contract's (tests/sidecar/test_protocol.py); here they are used as the agent uses them."""

from __future__ import annotations

import json

import asyncssh
import pytest

from bridge.model import leases as ls
from bridge.model import state
from bridge.model.leases import Action, Event, State, Status
from sidecar import headerrules, protocol
from sidecar.protocol import Lease, LeaseSetError

KEYS = [" ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh")
                 .decode().split()[:2]) for _ in range(20)]
TTL = 60.0


def lease(session: str, *rules: str, key: int = 0, kind: str = "steal", owner: str = "",
          started_at: int = 1_765_000_000) -> Lease:
    return Lease(session, owner or f"{session}@lap", kind, headerrules.parse_rules(rules),
                 KEYS[key], (8080,), started_at)


def looks(*values: str | None, every: float = 10.0) -> list[state.Seen]:
    return [state.Seen(i * every, v) for i, v in enumerate(values)]


# ---------------------------------------------------------------- beats


def test_the_session_format_is_the_locks() -> None:
    # the sidecar cannot import bridge.model.state: the two definitions are held equal here
    assert protocol.SESSION_PATTERN.pattern == state.SESSION_FORMAT.pattern


def test_a_beat_lives_in_the_router_deployments_metadata_per_lease() -> None:
    assert ls.beat_key("a1b2c3d4") == "bridge-k8s.io/beat.a1b2c3d4"
    assert ls.beat_patch("a1b2c3d4", 7) == {
        "metadata": {"annotations": {"bridge-k8s.io/beat.a1b2c3d4": "7"}}}
    assert ls.tombstone_patch("a1b2c3d4", "42") == {
        "metadata": {"annotations": {"bridge-k8s.io/beat.a1b2c3d4": "ended"},
                     "resourceVersion": "42"}}
    for forged in ("../x", "A1", "a" * 21, "", "a b", "a/b"):
        with pytest.raises(ValueError, match="not a session id"):
            ls.beat_key(forged)


@pytest.mark.parametrize("value, read", [
    ("17", "17"), ("0", "0"), ("ended", "ended"), ("9" * 20, "9" * 20),
    ("9" * 21, None), ("12a", None), ("", None), ("-1", None), ("١٢", None), (" 1", None),
    ("ENDED", None), (5, None), (None, None),
])
def test_a_beat_is_a_sequence_number_or_the_tombstone_anything_else_no_sign_of_life(
        value: object, read: str | None) -> None:
    assert ls.beat_of({"bridge-k8s.io/beat.s1": value}, "s1") == read
    assert ls.beat_of({"bridge-k8s.io/beat.s2": "5"}, "s1") is None
    assert ls.beat_of(None, "s1") is None


def test_a_lease_is_live_when_its_beat_changes_stale_when_it_does_not_for_the_ttl() -> None:
    assert ls.status(looks("1", "2"), TTL) is Status.LIVE
    assert ls.status(looks(None, "0"), TTL) is Status.LIVE  # the joiner's first beat appeared
    assert ls.status(looks("5", "5", "5"), TTL) is Status.WATCHING  # 20 s < TTL: not judged
    assert ls.status(looks("5", *["5"] * 6), TTL) is Status.STALE
    assert ls.status(looks(None, *[None] * 6), TTL) is Status.STALE  # never beat at all
    assert ls.status([], TTL) is Status.WATCHING


def test_clocks_are_never_compared_only_changes_on_the_observers_clock() -> None:
    # a beat is a sequence number: one that goes backwards (a restarted bridge, a forged value)
    # still changed; a value shaped like a time far ahead keeps nothing alive without changing
    assert ls.status(looks("900", "3"), TTL) is Status.LIVE
    assert ls.status(looks("99999999999999999999", *["99999999999999999999"] * 6), TTL) \
        is Status.STALE


def test_a_tombstone_is_final() -> None:
    assert ls.status(looks("4", "ended"), TTL) is Status.ENDED
    assert ls.status(looks("ended", "5", "6"), TTL) is Status.ENDED  # no revival after it


# ---------------------------------------------------------------- prune


def test_prune_drops_stale_and_ended_leases_and_keeps_the_order() -> None:
    a, b, c, d, e = (lease(s, f"x-dev={s}", key=i) for i, s in enumerate("abcde"))
    statuses = {"a": Status.LIVE, "b": Status.STALE, "c": Status.WATCHING, "d": Status.ENDED}
    assert ls.prune([a, b, c, d, e], statuses) == (a, c, e)  # e: never watched, kept


# ---------------------------------------------------------------- join


def test_a_join_appends_after_pruning_and_writes_its_first_beat() -> None:
    plain, alice = lease("plain"), lease("alice", "x-dev=alice", key=1)
    bob = lease("bob", "x-dev=bob", key=2)
    decision = ls.join([plain, alice], bob, {"plain": Status.STALE, "alice": Status.LIVE})
    assert isinstance(decision, ls.Join)
    assert decision.leases == (alice, bob) and decision.pruned == (plain,)
    assert decision.annotations == {"bridge-k8s.io/beat.plain": None,
                                    "bridge-k8s.io/beat.bob": "0"}
    # what is written reads back as the same set
    assert protocol.decode_leases(protocol.encode_leases(decision.leases)) == decision.leases


def test_a_second_plain_swap_is_refused_naming_the_holder() -> None:
    first, second = lease("first", owner="alice@lap1"), lease("second", key=1)
    decision = ls.join([first], second, {"first": Status.LIVE}, "deployment/web")
    assert isinstance(decision, ls.JoinRefused) and decision.holder == first
    assert decision.message == ("deployment/web is swapped by alice@lap1 (session first, steal "
                                "every request); nothing was changed: add --header to take "
                                "only your requests")


def test_the_same_header_rules_as_a_live_steal_lease_are_refused() -> None:
    a = lease("a", "x-dev=alice", "x-tenant~=acme", key=0)
    b = lease("b", "X-Tenant~=acme", "x-dev=alice", key=1)  # same set, other order and case
    decision = ls.join([a], b, {"a": Status.LIVE}, "deployment/web")
    assert isinstance(decision, ls.JoinRefused) and decision.holder == a
    assert "already routes these headers to a@lap (session a" in decision.message


def test_overlaps_mirrors_and_header_leases_beside_a_plain_swap_are_allowed() -> None:
    live = {s: Status.LIVE for s in ("plain", "a", "m")}
    current = [lease("plain"), lease("a", "x-dev=alice", key=1),
               lease("m", "x-dev=alice", key=2, kind="mirror")]
    for new in (lease("b", "x-dev~=al.*", key=3),  # overlaps a: precedence decides (8.4)
                lease("c", "x-dev=alice", "x-tenant=acme", key=3),
                lease("n", "x-dev=alice", key=3, kind="mirror"),  # a second mirror, same rules
                lease("o", key=3, kind="mirror")):  # mirrors everything
        assert isinstance(ls.join(current, new, live), ls.Join), new


def test_a_conflict_not_yet_judged_is_watched_first_a_stale_one_pruned() -> None:
    first, second = lease("first"), lease("second", key=1)
    assert ls.join([first], second, {}) == ls.WatchFirst(("first",))
    assert ls.join([first], second, {"first": Status.WATCHING}) == ls.WatchFirst(("first",))
    for dead in (Status.STALE, Status.ENDED):
        decision = ls.join([first], second, {"first": dead})
        assert isinstance(decision, ls.Join) and decision.leases == (second,)


def test_a_session_id_or_key_already_in_the_set_is_never_reused() -> None:
    # even a stale lease's: a collision is a copy or a forgery, not a new developer
    old = lease("same", "x-dev=a", key=0)
    for new in (lease("same", "x-dev=b", key=1), lease("other", "x-dev=b", key=0)):
        decision = ls.join([old], new, {"same": Status.STALE})
        assert isinstance(decision, ls.JoinRefused) and decision.holder == old
        assert "nothing was changed" in decision.message


def test_a_full_set_refuses_unless_a_lease_can_be_pruned_or_is_undecided() -> None:
    full = [lease(f"s{i}", f"x-dev=s{i}", key=i) for i in range(protocol.MAX_LEASES)]
    new = lease("late", "x-dev=late", key=protocol.MAX_LEASES)
    live = {le.session: Status.LIVE for le in full}
    decision = ls.join(full, new, live, "deployment/web")
    assert isinstance(decision, ls.JoinRefused) and decision.holder is None
    assert "16 live intercepts" in decision.message
    assert ls.join(full, new, {**live, "s3": Status.WATCHING}) == ls.WatchFirst(("s3",))
    decision = ls.join(full, new, {**live, "s3": Status.STALE})
    assert isinstance(decision, ls.Join) and len(decision.leases) == protocol.MAX_LEASES
    assert decision.leases[-1] == new


def test_a_refusal_is_one_line_with_the_owner_escaped() -> None:
    # an owner is printable by the contract, but a message never trusts that
    first = lease("first", owner="evil\x1b]0;pwned\x07")
    decision = ls.join([first], lease("second", key=1), {"first": Status.LIVE})
    assert isinstance(decision, ls.JoinRefused)
    assert "\x1b" not in decision.message and "\x07" not in decision.message
    assert "\n" not in decision.message


# ---------------------------------------------------------------- leave, last out


def test_the_last_one_out_restores_others_leave_the_set_alone() -> None:
    a, b, c = lease("a", "x-dev=a"), lease("b", "x-dev=b", key=1), lease("c", key=2)
    assert ls.leave([a, b, c], "a", {"b": Status.STALE, "c": Status.ENDED}) == ls.LastOut()
    assert ls.leave([a], "a", {}) == ls.LastOut()
    assert ls.leave([a, b, c], "a", {"b": Status.LIVE, "c": Status.STALE}) == \
        ls.LeaveAlone(("b",))
    # not judged yet counts as present: restoring under a live developer takes their swap
    assert ls.leave([a, b], "a", {}) == ls.LeaveAlone(("b",))
    assert ls.leave([a, b], "a", {"b": Status.WATCHING}) == ls.LeaveAlone(("b",))


class _Router:
    """The router Deployment's annotations behind a resourceVersion, as the API server keeps
    them: a conditional patch with an old version fails (409)."""

    def __init__(self, sessions: list[str]) -> None:
        self.version = 1
        self.annotations: dict[str, str] = {ls.beat_key(s): "7" for s in sessions}

    def read(self) -> tuple[int, dict[str, str]]:
        return self.version, dict(self.annotations)

    def patch(self, patch: dict[str, object], version: int) -> bool:
        if version != self.version:
            return False
        meta = patch["metadata"]
        assert isinstance(meta, dict)
        self.annotations.update(meta["annotations"])
        self.version += 1
        return True


def test_two_leavers_at_once_exactly_one_restores() -> None:
    a, b = lease("a", "x-dev=a"), lease("b", "x-dev=b", key=1)
    router = _Router(["a", "b"])
    seen_a, seen_b = router.read(), router.read()  # both read before either writes
    decisions: dict[str, object] = {}
    for me, seen in (("a", seen_a), ("b", seen_b)):
        version, annotations = seen
        while not router.patch(_tomb(me), version):
            version, annotations = router.read()  # 409: re-read, decide on what is there now
        statuses = {s: (Status.ENDED if ls.beat_of(annotations, s) == ls.TOMBSTONE
                        else Status.LIVE) for s in ("a", "b") if s != me}
        decisions[me] = ls.leave([a, b], me, statuses)
    assert decisions == {"a": ls.LeaveAlone(("b",)), "b": ls.LastOut()}
    assert router.annotations == {ls.beat_key("a"): "ended", ls.beat_key("b"): "ended"}


def _tomb(session: str) -> dict[str, object]:
    patch = ls.tombstone_patch(session, "unused")
    meta = patch["metadata"]
    assert isinstance(meta, dict)
    return {"metadata": {"annotations": meta["annotations"]}}


# ---------------------------------------------------------------- the next swap, restore


def test_a_routed_swap_found_is_joined_when_alive_repaired_when_dead() -> None:
    a, b = lease("a", "x-dev=a"), lease("b", "x-dev=b", key=1)
    assert ls.on_routed_lock([a, b], {"a": Status.STALE, "b": Status.LIVE}) == ls.JoinExisting()
    assert ls.on_routed_lock([a, b], {"a": Status.STALE}) == ls.WatchFirst(("b",))
    assert ls.on_routed_lock([a, b], {"a": Status.STALE, "b": Status.ENDED}) == \
        ls.RestoreFirst((a, b))
    # a lock and no lease (killed between the lock and the router's creation, 8.5 (a))
    assert ls.on_routed_lock([], {}) == ls.RestoreFirst(())


# ---------------------------------------------------------------- which lease is mine


def test_my_lease_is_the_one_with_my_session_and_my_key() -> None:
    mine, other = lease("mine", "x-dev=me", key=0), lease("other", key=1)
    assert ls.own_lease([other, mine], "mine", KEYS[0]) == mine
    assert ls.own_lease([other], "mine", KEYS[0]) is None  # pruned while I was away


@pytest.mark.parametrize("forged, says", [
    (lease("mine", key=2), "this session's id with another key"),
    (lease("thief", key=0), "this session's key under another session id"),
])
def test_a_lease_that_borrows_my_session_or_key_is_not_acted_on(forged: Lease,
                                                                 says: str) -> None:
    with pytest.raises(LeaseSetError, match=says):
        ls.own_lease([forged], "mine", KEYS[0])


def test_a_forged_set_is_refused_before_any_decision() -> None:
    # the agent decodes the template's BRIDGE_LEASES first: duplicates never reach `join`
    item = lease("a", key=0).as_json()
    for text in (json.dumps([item, item]),
                 json.dumps([item, {**item, "session": "b"}]),
                 json.dumps([item] * 17),
                 json.dumps([{**item, "ports": [True]}])):
        with pytest.raises(LeaseSetError):
            ls.decode_leases(text)


def test_a_joiners_claimed_start_time_changes_nothing() -> None:
    # clock skew (or a lie): started_at is shown, never used to order or prune
    early = lease("early", "x-dev~=a.*", key=0, started_at=2**40 - 1)
    late = lease("late", "x-dev~=.*e", key=1, started_at=0)
    assert ls.precedence([early, late]) == (early, late)
    c = ls.choose([early, late], [(b"x-dev", b"abe")], frozenset({"early", "late"}))
    assert c.steal == early and c.shadowed == (late,)
    assert ls.prune([early, late], {}) == (early, late)


# ---------------------------------------------------------------- the lease state machine


# Section 8.6 of the design, row by row (plus the rows this module adds, marked).
@pytest.mark.parametrize("current, event, after, action", [
    (State.JOINING, Event.AUTHENTICATED, State.ATTACHING, Action.NOTHING),
    (State.ATTACHING, Event.ATTACH, State.ACTIVE, Action.ROUTE),
    (State.ACTIVE, Event.OPEN_FAILED, State.SUSPECT, Action.TO_ORIGIN),
    (State.SUSPECT, Event.ANSWERED, State.ACTIVE, Action.ROUTE),
    (State.ACTIVE, Event.CONNECTION_LOST, State.AWAY, Action.START_TTL),
    (State.SUSPECT, Event.CONNECTION_LOST, State.AWAY, Action.START_TTL),
    (State.AWAY, Event.AUTHENTICATED, State.ATTACHING, Action.NOTHING),
    (State.AWAY, Event.TTL_PASSED, State.EXPIRED, Action.REFUSE_KEY),
    (State.ACTIVE, Event.DETACH, State.LEAVING, Action.DRAIN),
    (State.LEAVING, Event.DRAINED_OTHERS_ALIVE, State.ENDED, Action.REFUSE_KEY),
    (State.LEAVING, Event.DRAINED_LAST_OUT, State.RESTORED, Action.RESTORE),
    (State.EXPIRED, Event.PRUNED, State.GONE, Action.FORGET),
    (State.ENDED, Event.PRUNED, State.GONE, Action.FORGET),
    # added: a joiner killed before it connected expires too (the router's TTL from its start)
    (State.JOINING, Event.TTL_PASSED, State.EXPIRED, Action.REFUSE_KEY),
    # added: a laptop that never attached, or is suspect but sent the command, may leave
    (State.ATTACHING, Event.DETACH, State.LEAVING, Action.DRAIN),
    (State.SUSPECT, Event.DETACH, State.LEAVING, Action.DRAIN),
    # added: a leaver cut off while draining never comes back
    (State.LEAVING, Event.CONNECTION_LOST, State.LEAVING, Action.REFUSE_KEY),
])
def test_the_lease_state_machine(current: State, event: Event, after: State,
                                 action: Action) -> None:
    assert ls.step(current, event) == (after, action)


def test_anything_else_is_refused_and_changes_nothing() -> None:
    # events come from the network: an attach before the login, a second attach, a detach of
    # an expired lease... refused, never a crash, never a state change
    for current in State:
        for event in Event:
            if (current, event) not in ls.TABLE:
                assert ls.step(current, event) == (current, Action.REFUSE)
    assert ls.step(State.JOINING, Event.ATTACH) == (State.JOINING, Action.REFUSE)
    assert ls.step(State.ACTIVE, Event.ATTACH) == (State.ACTIVE, Action.REFUSE)


def test_an_expired_or_ended_lease_never_routes_again() -> None:
    # whatever events follow, only pruning moves it, and never to a routing state
    for terminal in (State.EXPIRED, State.ENDED, State.RESTORED, State.GONE):
        reachable, frontier = {terminal}, [terminal]
        while frontier:
            st = frontier.pop()
            for event in Event:
                nxt, _ = ls.step(st, event)
                if nxt not in reachable:
                    reachable.add(nxt)
                    frontier.append(nxt)
        assert reachable <= {terminal, State.GONE}, terminal
        assert State.ACTIVE not in reachable


def test_a_killed_laptop_comes_back_within_the_ttl_not_after() -> None:
    st = State.JOINING
    for event in (Event.AUTHENTICATED, Event.ATTACH, Event.CONNECTION_LOST,
                  Event.AUTHENTICATED, Event.ATTACH):
        st, _ = ls.step(st, event)
    assert st is State.ACTIVE
    st, _ = ls.step(st, Event.CONNECTION_LOST)
    st, action = ls.step(st, Event.TTL_PASSED)
    assert (st, action) == (State.EXPIRED, Action.REFUSE_KEY)
    assert st not in ls.ACCEPTS_LOGIN
    assert ls.step(st, Event.AUTHENTICATED) == (State.EXPIRED, Action.REFUSE)


def test_only_active_leases_get_requests() -> None:
    states = {s.value.lower(): s for s in State}
    assert ls.usable(states) == frozenset({"active"})
    assert ls.ROUTES == {State.ACTIVE}
    assert ls.ACCEPTS_LOGIN == {State.JOINING, State.AWAY}


def test_the_routers_states_are_the_wires() -> None:
    wire = {State(s) for s in protocol.ROUTER_STATES}
    assert wire == {State.JOINING, State.ATTACHING, State.ACTIVE, State.SUSPECT, State.AWAY,
                    State.EXPIRED, State.LEAVING}
