"""The session lock in annotations: round trip, staleness and the decision a new swap takes."""

from __future__ import annotations

import datetime as dt

from bridge import state

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def make_lock(heartbeat: dt.datetime = T0) -> state.Lock:
    return state.Lock(session="ab12cd34", owner="ann@laptop", replicas=3,
                      proxy="hello-bridge-ab12cd34",
                      ports="8080,80:8081", started_at=T0, heartbeat=heartbeat)


def test_encode_decode_round_trip() -> None:
    lock = make_lock(T0 + dt.timedelta(seconds=30))
    annotations = state.encode(lock)
    assert all(k.startswith(state.PREFIX) for k in annotations)
    assert all(isinstance(v, str) for v in annotations.values())
    assert state.decode({**annotations, "other/thing": "x"}) == lock


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
    # an unreadable heartbeat is the epoch: stale for any sane TTL
    assert state.is_stale(T0, lock.heartbeat, 60)


def test_zero_replicas_round_trip() -> None:
    lock = make_lock()
    lock = state.Lock(**{**lock.__dict__, "replicas": 0})
    assert state.decode(state.encode(lock)) == lock


def test_is_stale_boundaries() -> None:
    assert not state.is_stale(T0 + dt.timedelta(seconds=60), T0, 60)
    assert state.is_stale(T0 + dt.timedelta(seconds=61), T0, 60)
    assert not state.is_stale(T0, T0 + dt.timedelta(seconds=5), 60)  # clock skew: not stale


def test_decide() -> None:
    assert state.decide(None, T0, 60) == state.Proceed()
    live = make_lock(heartbeat=T0)
    assert state.decide(live, T0 + dt.timedelta(seconds=10), 60) == state.Refuse(
        "ann@laptop", T0, "ab12cd34")
    d = state.decide(live, T0 + dt.timedelta(seconds=90), 60)
    assert isinstance(d, state.RepairFirst)
    assert d.lock == live
    assert d.silent_for == 90


def test_patches() -> None:
    lock = make_lock()
    p = state.lock_patch(lock, "42")
    assert p["metadata"] == {"annotations": state.encode(lock), "resourceVersion": "42"}
    cleared = state.clear_patch()["metadata"]["annotations"]  # type: ignore[index]
    assert set(cleared) == set(state.KEYS) and all(v is None for v in cleared.values())
    hb = state.heartbeat_patch(T0)
    assert hb == {"metadata": {"annotations": {state.HEARTBEAT: "2026-01-02T03:04:05Z"}}}


def test_describe_age() -> None:
    assert state.describe_age(5) == "5s"
    assert state.describe_age(125) == "2m5s"
    assert state.describe_age(7300) == "2h1m"
    assert state.describe_age(90000) == "1d1h"
