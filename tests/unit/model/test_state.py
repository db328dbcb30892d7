"""The session lock in annotations: round trip, the heartbeat on the proxy, staleness judged on
the observer's own clock, and the decision a new swap takes."""

from __future__ import annotations

import datetime as dt

from bridge.model import state

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
SKEW = dt.timedelta(minutes=5)


def make_lock(started_at: dt.datetime = T0) -> state.Lock:
    return state.Lock(session="ab12cd34", owner="ann@laptop", replicas=3,
                      proxy="hello-bridge-ab12cd34", ports="8080,80:8081", started_at=started_at)


def seen(*looks: tuple[float, str | None]) -> list[state.Seen]:
    return [state.Seen(at, value) for at, value in looks]


def test_encode_decode_round_trip() -> None:
    lock = make_lock(T0 + dt.timedelta(seconds=30))
    annotations = state.encode(lock)
    assert all(k.startswith(state.PREFIX) for k in annotations)
    assert all(isinstance(v, str) for v in annotations.values())
    assert state.HEARTBEAT not in annotations  # the lock is written once: no heartbeat in it
    assert state.decode({**annotations, "other/thing": "x"}) == lock


def test_a_lock_of_the_previous_version_with_its_heartbeat_is_still_decoded() -> None:
    old = {**state.encode(make_lock()), state.HEARTBEAT: "2026-01-02T03:09:05Z"}
    lock = state.decode(old)
    assert lock is not None and not lock.problems
    assert lock.session == "ab12cd34" and lock.replicas == 3
    assert lock.heartbeat == T0 + dt.timedelta(minutes=5)
    assert state.needs_watching(lock)
    assert state.HEARTBEAT in state.clear_patch()["metadata"]["annotations"]  # type: ignore[operator,index]


def test_decode_without_lock() -> None:
    assert state.decode(None) is None
    assert state.decode({}) is None
    assert state.decode({"deployment.kubernetes.io/revision": "2"}) is None


def test_decode_garbled_lock_still_counts_as_a_lock() -> None:
    lock = state.decode({state.SESSION: "x", state.REPLICAS: "many", state.HEARTBEAT: "yesterday"})
    assert lock is not None
    assert lock.session == "x"
    assert lock.replicas == 1
    assert lock.owner == "unknown"
    assert lock.problems  # never acted on, never watched
    assert not state.needs_watching(lock)
    assert isinstance(state.decide(lock, state.Stale(600)), state.Doubtful)


def test_zero_replicas_round_trip() -> None:
    lock = make_lock()
    lock = state.Lock(**{**lock.__dict__, "replicas": 0})
    assert state.decode(state.encode(lock)) == lock


def test_an_unchanging_heartbeat_for_the_ttl_is_stale() -> None:
    assert state.liveness(seen((0, "7"), (30, "7"), (59.9, "7")), 60) == state.Watching(
        60 - 59.9)
    assert state.liveness(seen((0, "7"), (30, "7"), (60, "7")), 60) == state.Stale(60)


def test_a_change_is_alive_at_once() -> None:
    assert state.liveness(seen((10, "7"), (12, "8")), 60) == state.Alive(2)
    # a change back and forth, or any change later on, is a change
    assert state.liveness(seen((0, "7"), (59, "7"), (70, "8")), 60) == state.Alive(70)


def test_absent_is_a_value_like_any_other() -> None:
    """The lock is written before the proxy Deployment exists: no proxy is not stale at once;
    the proxy appearing is a sign of life; no proxy for the TTL is stale."""
    assert isinstance(state.liveness(seen((0, None)), 60), state.Watching)
    assert state.liveness(seen((0, None), (1, None), (2, "0")), 60) == state.Alive(2)
    assert state.liveness(seen((0, None), (61, None)), 60) == state.Stale(61)
    assert state.liveness(seen((0, "4"), (3, None)), 60) == state.Alive(3)  # being restored
    assert state.liveness([], 60) == state.Watching(60)


def test_skewed_timestamps_in_the_annotations_change_nothing() -> None:
    """Another laptop's clock 5 minutes ahead or behind: its start time (and an old lock's
    heartbeat time) decide nothing; only what this machine saw does."""
    for skew in (SKEW, -SKEW, 100 * SKEW, -100 * SKEW):
        lock = make_lock(started_at=T0 + skew)
        old = state.decode({**state.encode(lock),
                            state.HEARTBEAT: state.format_time(T0 + skew)})
        for lk in (state.decode(state.encode(lock)), old):
            assert lk is not None and state.lock_problems(lk) == [], skew
            assert state.decide(lk, state.Alive(1)) == state.Refuse(
                "ann@laptop", T0 + skew, "ab12cd34")
            stale = state.decide(lk, state.Stale(60))
            assert stale == state.RepairFirst(lk, state.Stale(60))
            # not watched yet (or still watching): never repaired
            assert isinstance(state.decide(lk), state.Refuse)
            assert isinstance(state.decide(lk, state.Watching(3)), state.Refuse)


def test_decide() -> None:
    assert state.decide(None) == state.Proceed()
    assert state.decide(None, state.Stale(100)) == state.Proceed()
    live = make_lock()
    assert state.decide(live, state.Alive(3)) == state.Refuse("ann@laptop", T0, "ab12cd34")
    d = state.decide(live, state.Stale(90))
    assert isinstance(d, state.RepairFirst)
    assert d.lock == live
    assert d.evidence == state.Stale(90)
    assert d.why() == "whose heartbeat did not change for 1m30s"
    # this machine's record says the holder's process is gone: dead, without watching
    gone = state.decide(live, state.Ended(4242))
    assert gone == state.RepairFirst(live, state.Ended(4242))
    assert gone.why() == "whose bridge on this machine (pid 4242) is no longer running"


def test_patches() -> None:
    lock = make_lock()
    p = state.lock_patch(lock, "42")
    assert p["metadata"] == {"annotations": state.encode(lock), "resourceVersion": "42"}
    cleared = state.clear_patch()["metadata"]["annotations"]  # type: ignore[index]
    assert set(cleared) == set(state.KEYS) and all(v is None for v in cleared.values())
    hb = state.heartbeat_patch(17, T0)
    assert hb == {"metadata": {"annotations": {state.HEARTBEAT: "17",
                                               state.HEARTBEAT_AT: "2026-01-02T03:04:05Z"}}}


def test_beat_of_reads_only_a_sequence_number() -> None:
    assert state.beat_of(state.beat_annotations(17, T0)) == "17"
    assert state.beat_of({}) is None and state.beat_of(None) is None
    for junk in ("2026-01-02T03:04:05Z", "-1", "1" * 21, "\x1b[2J", "１２"):
        assert state.beat_of({state.HEARTBEAT: junk}) is None, junk


def test_describe_age() -> None:
    assert state.describe_age(5) == "5s"
    assert state.describe_age(125) == "2m5s"
    assert state.describe_age(7300) == "2h1m"
    assert state.describe_age(90000) == "1d1h"


def test_the_users_own_running_bridge_is_refused_by_name() -> None:
    lk = state.Lock(session="ab12cd34", owner="root@vm", replicas=2,
                    proxy="hello-bridge-ab12cd34", ports="80", started_at=T0)
    mine = state.Running(0.0, 4242, None, dt.datetime(2026, 12, 7, 14, 5))
    decision = state.decide(lk, mine)
    assert isinstance(decision, state.Refuse) and decision.here == mine
    assert decision.explain("hello") == (
        "you are already swapping deployment/hello in another bridge (pid 4242, started "
        "14:05); end it first (Ctrl-C there), or run `bridge restore hello` if it hangs")
    theirs = state.decide(lk, state.Alive(3))
    assert isinstance(theirs, state.Refuse) and theirs.here is None
    assert "ask them to end it" in theirs.explain("hello")
