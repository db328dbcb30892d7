"""Restore against an in-memory stand-in for the API: retries while the API server falters,
never clears or refreshes a lock another session holds, and says how to finish by hand."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import anyio
import pytest

from bridge import restore, state
from bridge.kube import Unreachable
from bridge.lease import Lease, NotOurs
from bridge.progress import Progress
from tests.unit.support import FakeKube, api_error

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def lock(session: str = "s1", owner: str = "ann@laptop") -> state.Lock:
    return state.Lock(session=session, owner=owner, replicas=2, proxy=f"hello-bridge-{session}",
                      ports="8080", started_at=T0, heartbeat=T0)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore, "RETRY_DELAY", 0.01)
    monkeypatch.setattr(restore, "RETRY_FOR", 1.0)


def swapped(kube: FakeKube, lk: state.Lock) -> None:
    kube.add("hello", 0, state.encode(lk))
    add_proxy(kube, lk)


def add_proxy(kube: FakeKube, lk: state.Lock, original: str = "hello") -> None:
    """The proxy Deployment as bridge creates it: its labels, marker and owner reference."""
    kube.add(lk.proxy, 1, {state.PROXY_FOR_LABEL: original},
             labels={state.MANAGED_BY_LABEL: state.MANAGED_BY, state.SESSION_LABEL: lk.session,
                     state.PROXY_FOR_LABEL: original},
             ownerReferences=[{"kind": "Deployment", "name": original,
                               "uid": f"uid-{original}"}])


def run_restore(kube: FakeKube, **kw: Any) -> tuple[restore.Outcome, str]:
    out = io.StringIO()

    async def main() -> restore.Outcome:
        return await restore.restore(kube, "hello", Progress(stream=out),  # type: ignore[arg-type]
                                     **kw)

    return anyio.run(main), out.getvalue()


def test_restore_rides_out_an_api_server_that_falters() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.fail["get_deployment"] = [Unreachable("cannot reach the Kubernetes API"),
                                   api_error(504, "etcd timeout")]
    kube.fail["patch_deployment"] = [api_error(429, "too many requests")]
    kube.fail["delete_deployment"] = [Unreachable("connection reset")]
    outcome, text = run_restore(kube, lock=lk)
    assert outcome.ok, text
    assert kube.deployments["hello"]["spec"]["replicas"] == 2
    assert lk.proxy not in kube.deployments
    assert not any(k.startswith(state.PREFIX)
                   for k in kube.deployments["hello"]["metadata"]["annotations"])
    assert text.count("retrying") == 4


def test_api_server_gone_leaves_the_lock_and_says_how_to_finish() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.fail["get_deployment"] = [Unreachable("cannot reach the Kubernetes API")] * 1000
    outcome, text = run_restore(kube, lock=lk)
    assert not outcome.ok
    assert len(outcome.failures) == 1
    assert "could not read deployment/hello" in outcome.failures[0]
    assert "run `bridge restore hello`" in outcome.failures[0]
    assert "kubectl --context ctx -n ns scale deployment/hello --replicas=2" in \
        outcome.failures[0]
    # nothing was touched: the lock and the proxy stay for `bridge restore` to finish
    assert lk.proxy in kube.deployments
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == lk


def test_a_refusal_is_not_retried() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.fail["delete_deployment"] = [api_error(403, "forbidden: cannot delete deployments")]
    outcome, _ = run_restore(kube, lock=lk)
    assert kube.calls.count("delete_deployment") == 1
    assert len(outcome.failures) == 1
    assert f"kubectl --context ctx -n ns delete deployment/{lk.proxy}" in outcome.failures[0]
    assert kube.deployments["hello"]["spec"]["replicas"] == 2  # the other steps still ran


def test_a_swap_taking_the_deployment_during_the_restore_keeps_its_lock() -> None:
    """Between scaling back and clearing, another session takes the Deployment: its lock
    stays, whatever this restore had read before."""
    kube = FakeKube()
    lk, theirs = lock("s1"), lock("s2", "bob@desk")

    def take_over() -> None:
        dep = kube.deployments["hello"]
        dep["metadata"]["annotations"].update(state.encode(theirs))
        kube.rv += 1
        dep["metadata"]["resourceVersion"] = str(kube.rv)

    swapped(kube, lk)
    kube.after["delete_deployment"] = take_over
    outcome, text = run_restore(kube, lock=lk)
    assert outcome.ok
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == theirs
    assert "now held by session s2 of bob@desk" in text


def test_clearing_retries_after_a_conflict() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    bumps = []

    def unrelated_change() -> None:  # e.g. a label edited by someone: not a lock
        dep = kube.deployments["hello"]
        kube.rv += 1
        dep["metadata"]["resourceVersion"] = str(kube.rv)
        bumps.append(kube.rv)

    kube.after["delete_deployment"] = lambda: kube.after.__setitem__(
        "get_deployment", unrelated_change)
    outcome, _ = run_restore(kube, lock=lk)
    assert outcome.ok and bumps
    assert kube.calls.count("patch_deployment") == 3  # scale, clear (409), clear again
    assert not any(k.startswith(state.PREFIX)
                   for k in kube.deployments["hello"]["metadata"]["annotations"])


def lease_on(kube: FakeKube, lk: state.Lock) -> Lease:
    return Lease(kube, "hello", lk, Progress(stream=io.StringIO()))


def test_heartbeat_refreshes_only_its_own_lock() -> None:
    kube = FakeKube()
    mine = lock("s1")
    swapped(kube, mine)
    s = lease_on(kube, mine)
    anyio.run(s.beat)
    beat = state.decode(kube.deployments["hello"]["metadata"]["annotations"])
    assert beat is not None and beat.session == "s1" and beat.heartbeat > T0

    kube.deployments["hello"]["metadata"]["annotations"] = state.encode(lock("s2", "bob@desk"))
    with pytest.raises(NotOurs, match="restored or taken over"):
        anyio.run(s.beat)
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == \
        lock("s2", "bob@desk")

    kube.deployments["hello"]["metadata"]["annotations"] = {}
    with pytest.raises(NotOurs):
        anyio.run(s.beat)
    assert kube.deployments["hello"]["metadata"]["annotations"] == {}  # no stray heartbeat


def test_heartbeat_never_lands_on_a_lock_taken_between_read_and_write() -> None:
    kube = FakeKube()
    mine, theirs = lock("s1"), lock("s2", "bob@desk")
    swapped(kube, mine)
    s = lease_on(kube, mine)

    def take_over() -> None:
        dep = kube.deployments["hello"]
        dep["metadata"]["annotations"] = state.encode(theirs)
        kube.rv += 1
        dep["metadata"]["resourceVersion"] = str(kube.rv)

    kube.after["get_deployment"] = take_over
    with pytest.raises(NotOurs):
        anyio.run(s.beat)
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == theirs


def test_a_failing_heartbeat_never_cuts_the_restore_short() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.delay = 0.2  # the restore takes a while: the heartbeat fires meanwhile
    beats = []

    def broken(name: str, patch: dict[str, Any]) -> None:
        if (patch.get("metadata", {}).get("annotations") or {}).get(state.HEARTBEAT):
            beats.append(1)
            raise RuntimeError("a bug in the heartbeat")

    kube.on_patch = broken

    async def main() -> restore.Outcome:
        return await lease_on(kube, lk).release(wait=True, bound=10, heartbeat_interval=0.01)

    out = anyio.run(main)
    assert beats
    assert out.ok
    assert kube.deployments["hello"]["spec"]["replicas"] == 2
    assert lk.proxy not in kube.deployments
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) is None
