"""Restore against an in-memory stand-in for the API: retries while the API server falters,
never clears or refreshes a lock another session holds, and says how to finish by hand."""

from __future__ import annotations

import copy
import datetime as dt
import io
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from bridge import restore, state
from bridge.kube import ApiError, Unreachable
from bridge.progress import Progress
from bridge.session import NotOurs, Session, SwapOptions

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def lock(session: str = "s1", owner: str = "ann@laptop") -> state.Lock:
    return state.Lock(session=session, owner=owner, replicas=2, proxy=f"hello-bridge-{session}",
                      ports="8080", started_at=T0, heartbeat=T0)


class FakeKube:
    """Deployments in a dict; merge patches honour metadata.resourceVersion (409 if stale).
    `fail` maps a method name to a list of exceptions raised by its next calls."""

    namespace = "ns"
    context = "ctx"

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.fail: dict[str, list[Exception]] = {}
        self.calls: list[str] = []
        self.after: dict[str, Callable[[], None]] = {}  # method -> run after its next call
        self.delay = 0.0  # seconds each list_pods takes

    def add(self, name: str, replicas: int, annotations: dict[str, str] | None = None,
            **meta: Any) -> None:
        self.rv += 1
        self.deployments[name] = {
            "metadata": {"name": name, "annotations": dict(annotations or {}),
                         "resourceVersion": str(self.rv), "generation": 1,
                         "uid": f"uid-{name}", **meta},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}}},
            "status": {"observedGeneration": 1, "readyReplicas": replicas,
                       "updatedReplicas": replicas},
        }

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        pending = self.fail.get(method)
        if pending:
            raise pending.pop(0)

    def _leave(self, method: str) -> None:
        hook = self.after.pop(method, None)
        if hook:
            hook()

    async def get_deployment(self, name: str) -> dict[str, Any]:
        self._enter("get_deployment")
        if name not in self.deployments:
            raise ApiError(f'deployments.apps "{name}" not found', 404)
        out = copy.deepcopy(self.deployments[name])
        self._leave("get_deployment")
        return out

    async def patch_deployment(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self._enter("patch_deployment")
        dep = self.deployments[name]
        meta = patch.get("metadata", {})
        if meta.get("resourceVersion") and meta["resourceVersion"] != \
                dep["metadata"]["resourceVersion"]:
            raise ApiError("the object has been modified", 409, "Conflict")
        for k, v in (meta.get("annotations") or {}).items():
            if v is None:
                dep["metadata"]["annotations"].pop(k, None)
            else:
                dep["metadata"]["annotations"][k] = v
        if "spec" in patch:
            dep["spec"].update(patch["spec"])
            dep["status"]["readyReplicas"] = dep["status"]["updatedReplicas"] = \
                dep["spec"]["replicas"]
        self.rv += 1
        dep["metadata"]["resourceVersion"] = str(self.rv)
        self._leave("patch_deployment")
        return copy.deepcopy(dep)

    async def delete_deployment(self, name: str) -> bool:
        self._enter("delete_deployment")
        existed = self.deployments.pop(name, None) is not None
        self._leave("delete_deployment")
        return existed

    async def list_pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        self._enter("list_pods")
        await anyio.sleep(self.delay)
        return []

    async def list_services(self) -> list[dict[str, Any]]:
        return []

    async def get_endpoints(self, name: str) -> dict[str, Any]:
        return {}


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
                                   ApiError("etcd timeout", 504)]
    kube.fail["patch_deployment"] = [ApiError("too many requests", 429)]
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
    kube.fail["delete_deployment"] = [ApiError("forbidden: cannot delete deployments", 403)]
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


def session_on(kube: FakeKube, lk: state.Lock) -> Session:
    s = Session(SwapOptions(target="hello"), Progress(stream=io.StringIO()))
    s.kube = kube  # type: ignore[assignment]
    s.lock, s.name = lk, "hello"
    return s


def test_heartbeat_refreshes_only_its_own_lock() -> None:
    kube = FakeKube()
    mine = lock("s1")
    swapped(kube, mine)
    s = session_on(kube, mine)
    anyio.run(s._beat)
    beat = state.decode(kube.deployments["hello"]["metadata"]["annotations"])
    assert beat is not None and beat.session == "s1" and beat.heartbeat > T0

    kube.deployments["hello"]["metadata"]["annotations"] = state.encode(lock("s2", "bob@desk"))
    with pytest.raises(NotOurs, match="restored or taken over"):
        anyio.run(s._beat)
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == \
        lock("s2", "bob@desk")

    kube.deployments["hello"]["metadata"]["annotations"] = {}
    with pytest.raises(NotOurs):
        anyio.run(s._beat)
    assert kube.deployments["hello"]["metadata"]["annotations"] == {}  # no stray heartbeat


def test_heartbeat_never_lands_on_a_lock_taken_between_read_and_write() -> None:
    kube = FakeKube()
    mine, theirs = lock("s1"), lock("s2", "bob@desk")
    swapped(kube, mine)
    s = session_on(kube, mine)

    def take_over() -> None:
        dep = kube.deployments["hello"]
        dep["metadata"]["annotations"] = state.encode(theirs)
        kube.rv += 1
        dep["metadata"]["resourceVersion"] = str(kube.rv)

    kube.after["get_deployment"] = take_over
    with pytest.raises(NotOurs):
        anyio.run(s._beat)
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == theirs


def test_a_failing_heartbeat_never_cuts_the_restore_short() -> None:
    kube = FakeKube()
    lk = lock()
    swapped(kube, lk)
    kube.delay = 0.2  # the restore takes a while: the heartbeat fires meanwhile
    s = session_on(kube, lk)
    s.opts.heartbeat_interval = 0.01
    beats = []

    async def broken() -> None:
        beats.append(1)
        raise RuntimeError("a bug in the heartbeat")

    s._beat = broken  # type: ignore[method-assign]
    anyio.run(s._restore)
    assert beats
    assert s.restore_outcome is not None and s.restore_outcome.ok
    assert kube.deployments["hello"]["spec"]["replicas"] == 2
    assert lk.proxy not in kube.deployments
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) is None
