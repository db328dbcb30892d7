"""A forged lock never turns restore into a weapon (issue 13, item 2), and malformed lock
annotations never crash a command or reach the terminal unescaped (item 8).

The review's reproductions: `kubectl annotate deploy hello bridge-k8s.io/session=x
bridge-k8s.io/proxy=payments bridge-k8s.io/original-replicas=7` then `bridge restore hello`
deleted `payments` and scaled hello to 7; `proxy=hello` deleted the target; a missing
heartbeat read as the epoch, so any lock looked stale and `bridge swap` "repaired" it (now a
lock has no heartbeat: it is repaired only after its session's heartbeat was watched unchanged).
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import anyio

from bridge import status
from bridge.model import state
from bridge.progress import Progress
from bridge.swap import restore
from tests.unit.support import (
    FakeKube,
    add_proxy,
    fast_retries,
    forged,
    lock,
    run_restore,
    snapshot,
)

__all__ = ["fast_retries"]  # the autouse fixture, for this module too

NOW = dt.datetime.now(dt.UTC)
T = state.format_time(NOW - dt.timedelta(minutes=10))


def untouched(kube: FakeKube, before: dict[str, Any]) -> bool:
    return kube.deployments == before


def test_proxy_naming_another_deployment_deletes_nothing() -> None:
    kube = FakeKube()
    kube.add("hello", 2, forged(proxy="payments", replicas="7"))
    kube.add("payments", 3)
    before = snapshot(kube)
    out, text = run_restore(kube)
    assert not out.ok
    assert untouched(kube, before)  # payments still there, hello still at 2, lock kept
    assert "payments" in text and "nothing was changed" in text
    assert "kubectl annotate deployment/hello bridge-k8s.io/session-" in text


def test_proxy_naming_the_target_itself_deletes_nothing() -> None:
    kube = FakeKube()
    kube.add("hello", 2, forged(proxy="hello"))
    before = snapshot(kube)
    out, _ = run_restore(kube)
    assert not out.ok and untouched(kube, before)


def test_a_proxy_name_of_ours_on_an_object_bridge_did_not_create_is_not_deleted() -> None:
    """Name derived from the session, but not labelled/owned as bridge's proxy of hello."""
    kube = FakeKube()
    kube.add("hello", 0, forged())
    kube.add("hello-bridge-x", 1)  # someone's own Deployment
    before = snapshot(kube)
    out, text = run_restore(kube)
    assert not out.ok and untouched(kube, before)
    assert "not provably bridge's proxy" in text


def test_a_proxy_for_another_original_is_not_deleted() -> None:
    kube = FakeKube()
    lk = lock("abcd1234")
    kube.add("hello", 0, state.encode(lk))
    add_proxy(kube, lk, original="payments")  # labelled for another Deployment
    kube.add("payments", 1)
    before = snapshot(kube)
    out, _ = run_restore(kube)
    assert not out.ok and untouched(kube, before)


def test_replicas_out_of_bounds_or_garbled_change_nothing() -> None:
    for value in ("100000000", "-1", "7e3", "", "٣"):
        kube = FakeKube()
        kube.add("hello", 0, forged(replicas=value))
        before = snapshot(kube)
        out, text = run_restore(kube)
        assert not out.ok and untouched(kube, before), value
        assert "original-replicas" in text


def test_a_valid_lock_with_its_proven_proxy_is_restored() -> None:
    """The check is not a refusal of everything: bridge's own dead session is repaired."""
    kube = FakeKube()
    lk = lock("abcd1234")
    kube.add("hello", 0, state.encode(lk))
    add_proxy(kube, lk)
    out, text = run_restore(kube)
    assert out.ok, text
    assert "hello-bridge-abcd1234" not in kube.deployments
    assert kube.deployments["hello"]["spec"]["replicas"] == 2
    assert kube.deployments["hello"]["metadata"]["annotations"] == {}


def test_a_lock_without_heartbeat_is_never_repaired_unwatched() -> None:
    """A lock carries no heartbeat any more (it lives on the proxy): whatever its timestamps
    say, a swap repairs it only after watching its heartbeat stay unchanged for the TTL."""
    for stamp in (T, "2999-01-01T00:00:00Z", "1970-01-01T00:00:00Z"):
        lk = state.decode(forged(heartbeat="<absent>", started_at=stamp))
        assert lk is not None and not lk.problems
        assert isinstance(state.decide(lk), state.Refuse)
        assert isinstance(state.decide(lk, state.Watching(1)), state.Refuse)


def test_unparseable_timestamps_are_doubtful_never_a_crash() -> None:
    for stamp in ("yesterday", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59",
                  "1" * 5000):
        lk = state.decode(forged(heartbeat=stamp))
        assert lk is not None
        assert isinstance(state.decide(lk, state.Stale(600)), state.Doubtful), stamp
        rows = status.rows([{"metadata": {"name": "hello", "annotations": forged(
            heartbeat=stamp, started_at=stamp)}}], NOW, {"hello": state.Stale(600)})
        assert rows[0].state == "invalid"
        status.table(rows)


def test_session_ids_and_proxy_names_are_checked() -> None:
    for session in ("X", "a b", "a" * 21, "x;rm", ""):
        lk = state.decode(forged(session=session, proxy=f"hello-bridge-{session}"))
        assert lk is not None and lk.problems, session


def test_control_characters_in_annotations_are_escaped() -> None:
    evil = "\x1b]0;pwned\x07\x1b[2J\nbridge: restored"
    lk = state.decode(forged(owner=evil, ports=evil, session="x\x1b[31m"))
    assert lk is not None
    for text in (lk.owner, lk.ports, lk.session, *lk.problems):
        assert "\x1b" not in text and "\n" not in text and "\x07" not in text
    rows = status.rows([{"metadata": {"name": "hello", "annotations": forged(owner=evil)}}],
                       NOW, {})
    assert "\x1b" not in status.table(rows)


def test_restore_all_leaves_a_labelled_impostor_alone() -> None:
    """`payments` labelled as bridge's proxy of an ended session is not an orphan to delete."""
    kube = FakeKube()
    kube.add("payments", 3, {state.PROXY_FOR_LABEL: "hello"},
             labels={state.MANAGED_BY_LABEL: state.MANAGED_BY, state.SESSION_LABEL: "zz",
                     state.PROXY_FOR_LABEL: "hello"})
    kube.add("hello", 2)

    async def list_deployments() -> list[dict[str, Any]]:
        return [dict(d) for d in kube.deployments.values()]

    kube.list_deployments = list_deployments  # type: ignore[attr-defined]
    before = snapshot(kube)

    async def main() -> restore.Outcome:
        return await restore.restore_all(kube, Progress(stream=io.StringIO()))  # type: ignore[arg-type]

    anyio.run(main)
    assert untouched(kube, before)


def test_pod_log_and_status_text_reach_the_terminal_escaped() -> None:
    """A failing proxy pod's log lines and termination reason are the pod's own text."""
    import pytest

    from bridge.errors import BridgeError
    from bridge.swap.link import Linker, LinkSpec

    evil = "\x1b]0;owned\x07\x1b[2J"

    class Kube:
        async def pod_log(self, name: str, container: str, **kw: Any) -> str:
            assert kw.get("limit_bytes")  # bounded
            return f"line one {evil}\nline two\r{evil}\n"

    async def ours() -> None:
        pass

    linker = Linker(Kube(), lambda pod: None, LinkSpec("abcd", "web", 8022, None, []),  # type: ignore[arg-type]
                    Progress(stream=io.StringIO()), ours)
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [
        {"name": "web", "state": {"terminated": {"exitCode": 1, "reason": evil}}}]}}
    with pytest.raises(BridgeError) as e:
        anyio.run(linker.check_pod, pod)
    assert "\x1b" not in str(e.value) and "\r" not in str(e.value)
    assert "line one" in str(e.value)
