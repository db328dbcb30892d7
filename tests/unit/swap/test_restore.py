"""Restore against an in-memory stand-in for the API: retries while the API server falters,
never clears or refreshes a lock another session holds, and says how to finish by hand."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import io
from typing import Any

import anyio
import pytest

from bridge.kube.client import Unreachable
from bridge.model import state
from bridge.progress import Progress
from bridge.swap import restore
from bridge.swap.lease import NotOurs
from tests.unit.support import (
    FakeKube,
    add_proxy,
    api_error,
    fast_retries,
    lease_on,
    lock,
    run_restore,
)

__all__ = ["fast_retries"]  # the autouse fixture, for this module


def swapped(kube: FakeKube, lk: state.Lock) -> None:
    kube.add("hello", 0, state.encode(lk))
    add_proxy(kube, lk)


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


def test_a_step_retries_for_its_bound_then_says_how_to_finish(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """restore's retries are bridge.kube.retry's policy with a time bound: an API server that
    stays away ends the step after RETRY.within seconds, not after a number of calls."""
    monkeypatch.setattr(restore, "RETRY", dataclasses.replace(restore.RETRY, base=0.05,
                                                              cap=0.05, within=0.3))
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.fail["delete_deployment"] = [Unreachable("connection reset")] * 1000
    outcome, text = run_restore(kube, lock=lk)
    assert 3 <= kube.calls.count("delete_deployment") <= 8, kube.calls  # 0.3 s, 0.05 apart
    assert text.count("deleting deployment/hello-bridge-s1: connection reset; retrying") >= 3
    assert outcome.failures == [
        "could not delete proxy deployment/hello-bridge-s1: connection reset; run: kubectl "
        "--context ctx -n ns delete deployment/hello-bridge-s1"]


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


def patched(kube: FakeKube) -> list[str]:
    names: list[str] = []
    kube.on_patch = lambda name, patch: names.append(name)
    return names


def test_the_heartbeat_bumps_the_proxy_and_never_writes_the_original() -> None:
    kube = FakeKube()
    mine = lock("s1")
    swapped(kube, mine)
    original = copy.deepcopy(kube.deployments["hello"])
    names = patched(kube)
    s = lease_on(kube, mine)
    values = []
    for _ in range(3):
        anyio.run(s.beat)
        values.append(state.beat_of(kube.deployments[mine.proxy]["metadata"]["annotations"]))
    assert values == ["1", "2", "3"]  # a new value every beat
    assert names == [mine.proxy] * 3
    assert kube.deployments["hello"] == original  # not one write: same resourceVersion


def test_no_heartbeat_before_the_proxy_exists() -> None:
    kube = FakeKube()
    mine = lock("s1")
    kube.add("hello", 0, state.encode(mine))
    names = patched(kube)
    s = lease_on(kube, mine)
    s.proxy_uid = ""  # not created yet
    anyio.run(s.beat)
    assert names == []


def test_the_heartbeat_stops_once_the_lock_or_the_proxy_is_not_ours() -> None:
    kube = FakeKube()
    mine = lock("s1")
    swapped(kube, mine)
    s = lease_on(kube, mine)
    names = patched(kube)
    kube.deployments["hello"]["metadata"]["annotations"] = state.encode(lock("s2", "bob@desk"))
    with pytest.raises(NotOurs, match="restored or taken over"):
        anyio.run(s.beat)
    kube.deployments["hello"]["metadata"]["annotations"] = {}
    with pytest.raises(NotOurs):
        anyio.run(s.beat)
    assert names == [] and kube.deployments["hello"]["metadata"]["annotations"] == {}

    # a proxy Deployment replaced or deleted gets no beat (the link decides whether the
    # session goes on; a restore deletes the proxy before it clears the lock)
    kube.deployments["hello"]["metadata"]["annotations"] = state.encode(mine)
    kube.deployments[mine.proxy]["metadata"]["uid"] = "someone-elses"
    anyio.run(s.beat)
    del kube.deployments[mine.proxy]
    anyio.run(s.beat)
    assert names == []


def test_the_heartbeat_never_writes_a_lock_taken_between_read_and_write() -> None:
    kube = FakeKube()
    mine, theirs = lock("s1"), lock("s2", "bob@desk")
    swapped(kube, mine)
    s = lease_on(kube, mine)
    names = patched(kube)

    def take_over() -> None:
        dep = kube.deployments["hello"]
        dep["metadata"]["annotations"] = state.encode(theirs)
        kube.rv += 1
        dep["metadata"]["resourceVersion"] = str(kube.rv)

    kube.after["get_deployment"] = take_over
    anyio.run(s.beat)  # read ours, then beat on our own proxy
    with pytest.raises(NotOurs):
        anyio.run(s.beat)
    assert "hello" not in names
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == theirs


def test_a_failing_heartbeat_never_cuts_the_restore_short() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.delay = 0.2  # the restore takes a while: the heartbeat fires meanwhile
    # (while it waits for the Service to send traffic to the original's pod again)
    kube.services = [{"metadata": {"name": "hello"}, "spec": {"selector": {"app": "hello"}}}]
    kube.pods = [{"metadata": {"name": "hello-1", "labels": {"app": "hello"}},
                  "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                             "conditions": [{"type": "Ready", "status": "True"}]}}]
    kube.endpoints = {"hello": {"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]}}
    kube.after["list_pods"] = kube.pods.clear  # then the proxy's pods are gone at once
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


def replicaset(name: str, owner_uid: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": dict(annotations),
                         "ownerReferences": [{"kind": "Deployment", "uid": owner_uid,
                                              "controller": True}]}}


def copies(lk: state.Lock) -> dict[str, str]:
    """What the Deployment controller copied onto the original's ReplicaSet during the swap
    (an earlier bridge's heartbeat included), beside annotations of its own."""
    return {**state.encode(lk), state.HEARTBEAT: "2026-01-01T00:00:10Z",
            "deployment.kubernetes.io/revision": "3", "team": "payments"}


def test_restore_removes_the_locks_copies_from_the_originals_replicasets() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.replicasets["hello-abc"] = replicaset("hello-abc", "uid-hello", copies(lk))
    kube.replicasets["other-abc"] = replicaset("other-abc", "uid-other", copies(lk))
    out, text = run_restore(kube, lock=lk)
    assert out.ok, text
    assert kube.replicasets["hello-abc"]["metadata"]["annotations"] == {
        "deployment.kubernetes.io/revision": "3", "team": "payments"}
    assert kube.replicasets["other-abc"]["metadata"]["annotations"] == copies(lk)  # not its


def test_restore_of_an_unswapped_deployment_still_removes_old_copies() -> None:
    kube = FakeKube()
    kube.add("hello", 2)
    kube.replicasets["hello-abc"] = replicaset("hello-abc", "uid-hello", copies(lock()))
    out, text = run_restore(kube)
    assert out.ok and "nothing to restore" in text
    assert kube.replicasets["hello-abc"]["metadata"]["annotations"] == {
        "deployment.kubernetes.io/revision": "3", "team": "payments"}


def test_replicasets_are_cleaned_only_once_the_controller_observed_the_lock_gone() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.replicasets["hello-abc"] = replicaset("hello-abc", "uid-hello", copies(lk))
    order: list[str] = []

    def clear_bumps_generation(name: str, patch: dict[str, Any]) -> None:
        annotations = patch.get("metadata", {}).get("annotations") or {}
        if name == "hello" and annotations.get(state.SESSION, "x") is None:
            dep = kube.deployments["hello"]
            dep["metadata"]["generation"] += 1  # the controller has not seen it yet
            order.append("cleared")

            def observe() -> None:
                order.append("observed")
                dep["status"]["observedGeneration"] = dep["metadata"]["generation"]

            kube.after["get_deployment"] = lambda: kube.after.update(get_deployment=observe)

    kube.on_patch = clear_bumps_generation
    real_patch = kube.patch_replicaset

    async def patch_replicaset(name: str, patch: dict[str, Any]) -> dict[str, Any]:
        order.append("cleaned")
        return await real_patch(name, patch)

    kube.patch_replicaset = patch_replicaset  # type: ignore[method-assign]
    out, text = run_restore(kube, lock=lk)
    assert out.ok, text
    assert order == ["cleared", "observed", "cleaned"]


def test_unswapped_state() -> None:
    base = {"metadata": {"generation": 4, "annotations": {"team": "x"}},
            "status": {"observedGeneration": 4}}
    assert restore.unlocked_and_observed(base) is True
    assert restore.unlocked_and_observed({**base, "status": {"observedGeneration": 3}}) is False
    relocked = {"metadata": {"generation": 5, "annotations": state.encode(lock("s2"))},
                "status": {"observedGeneration": 5}}
    assert restore.unlocked_and_observed(relocked) is None  # a new session's: not ours


def test_no_right_to_patch_replicasets_is_one_warning_and_the_restore_succeeds() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.replicasets["hello-abc"] = replicaset("hello-abc", "uid-hello", copies(lk))
    kube.fail["patch_replicaset"] = [api_error(403, "replicasets.apps is forbidden")]
    out, text = run_restore(kube, lock=lk)
    assert out.ok, text
    warnings = [ln for ln in text.splitlines() if "warning" in ln]
    assert len(warnings) == 1, text
    assert "replicaset/hello-abc" in warnings[0] and "forbidden" in warnings[0]
    assert ("kubectl --context ctx -n ns annotate replicaset/hello-abc "
            "bridge-k8s.io/heartbeat- bridge-k8s.io/original-replicas-") in warnings[0]


def test_no_right_to_list_replicasets_is_one_warning_and_the_restore_succeeds() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.fail["list_replicasets_strict"] = [api_error(403, "replicasets.apps is forbidden")]
    out, text = run_restore(kube, lock=lk)
    assert out.ok, text
    warnings = [ln for ln in text.splitlines() if "warning" in ln]
    assert len(warnings) == 1, text
    assert "annotate replicaset -l app=hello bridge-k8s.io/session-" in warnings[0]


def _repair_seeing(verdict: state.Liveness) -> str:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    out = io.StringIO()

    async def watch(_k: object, locked: dict[str, object], _p: object) -> dict[str, object]:
        return {name: verdict for name in locked}

    async def main() -> restore.Outcome:
        return await restore.repair(kube, "hello", Progress(stream=out),  # type: ignore[arg-type]
                                    wait=False, wait_timeout=5, watch=watch)  # type: ignore[arg-type]

    assert anyio.run(main).ok
    assert lk.proxy not in kube.deployments
    return out.getvalue()


def test_repair_names_the_users_own_live_bridge_instead_of_a_heartbeat() -> None:
    """`bridge restore hello` while the user's own bridge holds it: named as theirs (pid,
    terminal) from this machine's record, not as someone's session whose heartbeat changed."""
    own = state.Running(0.0, 4242, "/dev/pts/3",
                        dt.datetime(2026, 12, 8, 14, 5, tzinfo=dt.UTC))
    text = _repair_seeing(own)
    assert "your own bridge on this machine (pid 4242, terminal /dev/pts/3, started 14:05)" \
        in text, text
    assert "heartbeat changed" not in text
    # someone else's live session keeps the heartbeat wording
    other = _repair_seeing(state.Alive(1.0))
    assert "is still alive (its heartbeat changed)" in other and "your own" not in other
