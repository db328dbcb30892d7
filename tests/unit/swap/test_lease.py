"""The lease's view of other sessions (bridge.swap.lease: watch_sessions, clear_the_way): a
lock held by this user's own bridge on this machine is named as such at once, unwatched."""

from __future__ import annotations

import copy
import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bridge import status
from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError
from bridge.local import records
from bridge.model import state
from bridge.model.outcome import Outcome
from bridge.progress import Progress
from bridge.swap import lease
from tests.unit.support import (
    FakeKube,
    SlowKube,
    api_error,
    clear_way,
    forged,
    locked,
    snapshot,
    watched_lock,
)

REPO = Path(__file__).resolve().parents[3]
SESSION = "ab12cd34"


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setenv("BRIDGE_OWNER", "root@vm")  # who this bridge is: the lock's owner
    return tmp_path


def _locked(kube: FakeKube) -> state.Lock:
    lk = state.Lock(session=SESSION, owner="root@vm", replicas=2,
                    proxy=f"hello-bridge-{SESSION}", ports="80",
                    started_at=dt.datetime.now(dt.UTC))
    kube.add("hello", 0, state.encode(lk))
    return lk


def _clear(kube: FakeKube, ttl: float) -> str:
    """The error line clear_the_way ended with ("" if it let the swap go on), then what it
    printed."""
    out = io.StringIO()

    async def main() -> None:
        await lease.clear_the_way(kube, await kube.get_deployment("hello"), ttl=ttl, bound=5,
                                  progress=Progress(stream=out), outcome=Outcome())

    try:
        anyio.run(main)
        error = ""
    except BridgeError as e:
        error = str(e)
    return error + "\n" + out.getvalue()


def test_a_second_swap_names_the_users_own_live_bridge_at_once() -> None:
    kube = FakeKube()
    _locked(kube)
    records.register(SESSION, kube.namespace, "hello")  # this process holds it
    me = records.read(SESSION)
    assert me is not None
    started = dt.datetime.fromtimestamp(me.started).astimezone().strftime("%H:%M")
    kube.calls.clear()
    text = _clear(kube, ttl=5)  # (watched, it would be stale after 5 s and repaired)
    first = text.splitlines()[0]
    assert first.startswith(f"you are already swapping deployment/hello in another bridge "
                            f"(pid {os.getpid()}, ")
    assert first.endswith(f"started {started}); end it first (Ctrl-C there), or run "
                          "`bridge restore hello` if it hangs")
    assert "ask them" not in text and "checking whether" not in text
    # the test's read and the re-read after the verdict: no look at any heartbeat
    assert kube.calls == ["get_deployment", "get_deployment"]
    assert kube.deployments["hello"]["spec"]["replicas"] == 0  # nothing touched


@pytest.mark.parametrize("recorded", [False, True])
def test_another_users_or_machines_session_is_still_watched(
        recorded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """No record here (another user, another machine), or a record but another owner (people
    sharing an account, each with their BRIDGE_OWNER): the heartbeat decides, as before."""
    kube = FakeKube()
    _locked(kube)
    if recorded:
        records.register(SESSION, kube.namespace, "hello")
        monkeypatch.setenv("BRIDGE_OWNER", "bob@vm")
    text = _clear(kube, ttl=0.3)  # no proxy, no beat: stale after the TTL, repaired first
    assert text.startswith("\n")  # repaired, the swap goes on
    assert "root@vm (session ab12cd34); checking whether that session is alive" in text
    assert "restoring it first" in text


def test_a_record_of_another_deployment_or_a_dead_process_is_not_a_live_own_session() -> None:
    records.register(SESSION, "ns", "web")
    assert lease.running_here(SESSION, "ns", "hello") is None
    assert lease.running_here(SESSION, "other", "web") is None
    mine = lease.running_here(SESSION, "ns", "web")
    assert mine is not None and mine.pid == os.getpid()
    p = subprocess.run(
        [sys.executable, "-c", "import sys; from bridge.local import records; "
         "records.register(*sys.argv[1:])", "cd34ab12", "ns", "hello"],
        cwd=REPO, check=True, env=os.environ.copy())
    assert p.returncode == 0
    assert lease.running_here("cd34ab12", "ns", "hello") is None  # that bridge exited


def test_watch_sessions_gives_running_for_own_and_status_says_so() -> None:
    kube = FakeKube()
    lk = _locked(kube)
    records.register(SESSION, kube.namespace, "hello")

    async def main() -> dict[str, state.Liveness]:
        return await lease.watch_sessions(kube, {"hello": (kube.deployments["hello"], lk)},
                                          ttl=5, progress=Progress(stream=io.StringIO()))

    seen = anyio.run(main)["hello"]
    assert isinstance(seen, state.Running) and seen.pid == os.getpid()
    heartbeat, live = status.describe(seen)
    assert live == "live" and heartbeat.startswith(f"your bridge here (pid {os.getpid()}")


# -- moved here from the old test_session.py

def test_the_original_is_scaled_only_while_the_lock_is_ours() -> None:
    from bridge.swap.lease import Lease, NotOurs

    kube = FakeKube()
    lk = locked(kube)
    kube.deployments["hello"]["metadata"]["annotations"] = {}  # restored by someone
    lease = Lease(kube, "hello", lk, Progress(stream=io.StringIO()))
    with pytest.raises(NotOurs):
        anyio.run(lease.scale_original, 0)
    assert "patch_deployment" not in kube.calls

    kube = FakeKube()
    lk = locked(kube)
    lease = Lease(kube, "hello", lk, Progress(stream=io.StringIO()))

    def heartbeat_in_between() -> None:  # someone writes between our read and our patch
        dep = kube.deployments["hello"]
        kube.rv += 1
        dep["metadata"]["resourceVersion"] = str(kube.rv)

    kube.after["get_deployment"] = heartbeat_in_between
    anyio.run(lease.scale_original, 0)
    assert kube.calls.count("patch_deployment") == 2  # 409, read again, patch again
    assert kube.deployments["hello"]["spec"]["replicas"] == 0
    assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == lk


def test_patch_when_retries_conflicts_and_gives_up_after_a_bound() -> None:
    from bridge.kube import conditional

    kube = FakeKube()
    kube.add("hello", 1)
    written = []

    async def write(patch: dict) -> dict:  # type: ignore[type-arg]
        written.append(patch)
        return await kube.patch_deployment("hello", patch)

    def always_conflict() -> None:
        kube.rv += 1
        kube.deployments["hello"]["metadata"]["resourceVersion"] = str(kube.rv)

    async def read() -> dict:  # type: ignore[type-arg]
        dep = await kube.get_deployment("hello")
        always_conflict()  # someone writes after every read
        return dep

    with pytest.raises(conditional.KeptChanging, match="3 conflicts"):
        anyio.run(lambda: conditional.patch_when(
            read, write, lambda dep: {"spec": {"replicas": 5}}, what="x", attempts=3))
    assert len(written) == 3 and all(p["metadata"]["resourceVersion"] for p in written)
    assert kube.deployments["hello"]["spec"]["replicas"] == 1

    async def no() -> bool:
        return await conditional.patch_when(
            lambda: kube.get_deployment("hello"), write, lambda dep: None, what="x")

    assert anyio.run(no) is False and len(written) == 3


def test_taking_the_lock_keeps_the_restore_step_only_when_the_lock_may_be_taken() -> None:
    from bridge.kube.client import Unreachable
    from bridge.model.outcome import Outcome
    from bridge.swap.lease import Lease

    async def noop() -> None:
        pass

    from bridge.kube.conditional import CONFLICT_RETRIES

    for failures, kept in [([api_error(409, "modified")] * CONFLICT_RETRIES, False),
                           ([api_error(403, "no")], False), ([Unreachable("no answer")], True)]:
        kube = FakeKube()
        kube.add("hello", 2)
        lk = locked(FakeKube())
        kube.fail["patch_deployment"] = list(failures)
        stack, outcome = CleanupStack(Progress(stream=io.StringIO())), Outcome()
        lease = Lease(kube, "hello", lk, stack.progress)

        async def take(lease: Lease = lease, kube: FakeKube = kube, outcome: Outcome = outcome,
                       stack: CleanupStack = stack) -> None:
            await lease.take(kube.deployments["hello"], outcome=outcome, stack=stack,
                             restore_step=noop)

        with pytest.raises(BridgeError):
            anyio.run(take)
        assert (len(stack.steps) == 1) is kept
        assert outcome.touched is kept


def test_taking_the_lock_retries_a_conflict_that_left_only_status_changed() -> None:
    """The Deployment controller updates the status (and the revision annotation) after a
    stale session's repair: taking the lock reads again and takes it; a new lock or a spec
    change since the plan was made refuses, and keeps no restore step."""
    from bridge.model.outcome import Outcome
    from bridge.swap.lease import Lease

    async def noop() -> None:
        pass

    def status_update(dep: dict) -> None:  # type: ignore[type-arg]
        dep["status"]["observedGeneration"] = 2
        dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "2"

    def spec_update(dep: dict) -> None:  # type: ignore[type-arg]
        dep["spec"]["replicas"] = 5

    def locked_by_another(dep: dict) -> None:  # type: ignore[type-arg]
        dep["metadata"]["annotations"].update(state.encode(locked(FakeKube(), "ffff")))

    for change, taken in [(status_update, True), (spec_update, False),
                          (locked_by_another, False)]:
        kube = FakeKube()
        kube.add("hello", 2)
        planned = copy.deepcopy(kube.deployments["hello"])
        dep = kube.deployments["hello"]
        change(dep)  # someone wrote after bridge read it
        kube.rv += 1
        dep["metadata"]["resourceVersion"] = str(kube.rv)
        lk = locked(FakeKube())
        stack, outcome = CleanupStack(Progress(stream=io.StringIO())), Outcome()
        lease = Lease(kube, "hello", lk, stack.progress)

        async def take(lease: Lease = lease, outcome: Outcome = outcome,
                       stack: CleanupStack = stack, planned: dict = planned) -> None:  # type: ignore[type-arg]
            await lease.take(planned, outcome=outcome, stack=stack, restore_step=noop)

        if taken:
            anyio.run(take)
            assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) == lk
            assert kube.calls.count("patch_deployment") == 2  # 409, read again, taken
        else:
            with pytest.raises(BridgeError, match="changed while bridge was taking it"):
                anyio.run(take)
            assert kube.calls.count("patch_deployment") == 1
            assert state.decode(kube.deployments["hello"]["metadata"]["annotations"]) != lk
        assert (len(stack.steps) == 1) is taken
        assert outcome.touched is taken


def test_a_second_swap_is_refused_when_the_heartbeat_changes() -> None:

    kube = FakeKube()
    lk = watched_lock(kube, proxy=True)

    async def beat() -> None:
        await anyio.sleep(0.2)
        kube.deployments[lk.proxy]["metadata"]["annotations"][state.HEARTBEAT] = "8"

    with pytest.raises(BridgeError, match="already swapped by ann@laptop") as e:
        clear_way(kube, ttl=30, during=beat)
    assert ("deployment/hello is locked by ann@laptop (session s1); checking whether that "
            "session is alive (up to 30s)") in "".join(e.value.__notes__)
    assert lk.proxy in kube.deployments and kube.deployments["hello"]["spec"]["replicas"] == 0


def test_a_second_swap_repairs_a_session_whose_heartbeat_stayed_the_same_for_the_ttl() -> None:
    kube = FakeKube()
    lk = watched_lock(kube, proxy=True)
    dep, text = clear_way(kube, ttl=0.5)
    assert "whose heartbeat did not change for 0s; restoring it first" in text
    assert lk.proxy not in kube.deployments
    assert kube.deployments["hello"]["spec"]["replicas"] == 2
    assert dep["metadata"]["annotations"] == {}


def test_a_dead_session_is_repaired_even_when_every_look_takes_time() -> None:
    """The TTL is counted from the first look's answer, not from before it was asked: a slow
    first look (here 0.3 s of a 0.5 s TTL: a new connection's handshakes) must not end the
    watch "still watching", which refused the swap as if the dead session were alive (CI
    failure: "already swapped by ..." after SIGKILL in the restore, BRIDGE_HEARTBEAT_TTL=2)."""
    # the swap's own read, then the first look's (a new connection's handshakes)
    kube = SlowKube([0.0, 0.3])
    lk = watched_lock(kube, proxy=True)
    dep, text = clear_way(kube, ttl=0.5)
    assert "restoring it first" in text
    assert lk.proxy not in kube.deployments
    assert kube.deployments["hello"]["spec"]["replicas"] == 2


def test_no_proxy_yet_is_not_stale_at_once_and_its_creation_is_a_sign_of_life() -> None:
    from tests.unit.support import add_proxy

    kube = FakeKube()
    lk = watched_lock(kube, proxy=False)

    async def create_proxy() -> None:
        await anyio.sleep(0.2)
        add_proxy(kube, lk)
        kube.deployments[lk.proxy]["metadata"]["annotations"][state.HEARTBEAT] = "0"

    with pytest.raises(BridgeError, match="already swapped by ann@laptop"):
        clear_way(kube, ttl=30, during=create_proxy)
    # and a lock whose proxy never comes is stale after the TTL
    kube2 = FakeKube()
    watched_lock(kube2, proxy=False)
    _dep, text = clear_way(kube2, ttl=0.5)
    assert "restoring it first" in text and kube2.deployments["hello"]["spec"]["replicas"] == 2


def test_a_heartbeat_on_a_proxy_that_is_not_provably_the_sessions_is_no_sign_of_life() -> None:

    kube = FakeKube()
    lk = watched_lock(kube, proxy=True)
    kube.deployments[lk.proxy]["metadata"]["ownerReferences"] = []  # a look-alike

    async def beat() -> None:
        for n in range(8, 100):
            await anyio.sleep(0.05)
            if lk.proxy in kube.deployments:
                kube.deployments[lk.proxy]["metadata"]["annotations"][state.HEARTBEAT] = str(n)

    with pytest.raises(BridgeError):  # judged stale, and then its repair refuses the look-alike
        clear_way(kube, ttl=0.5, during=beat)


def test_a_session_of_the_previous_version_beating_on_the_original_is_alive() -> None:
    """A lock written by an earlier bridge: no heartbeat on its proxy, but the heartbeat time
    in the lock changes (compared for equality only, never with a clock)."""

    kube = FakeKube()
    lk = watched_lock(kube, proxy=True)
    del kube.deployments[lk.proxy]["metadata"]["annotations"][state.HEARTBEAT]
    kube.deployments["hello"]["metadata"]["annotations"][state.HEARTBEAT] = \
        "2020-01-01T00:00:00Z"  # years behind: no matter

    async def beat() -> None:
        await anyio.sleep(0.2)
        kube.deployments["hello"]["metadata"]["annotations"][state.HEARTBEAT] = \
            "2020-01-01T00:00:10Z"

    with pytest.raises(BridgeError, match="already swapped by ann@laptop"):
        clear_way(kube, ttl=30, during=beat)


def test_a_session_that_ends_while_watched_lets_the_swap_proceed() -> None:
    kube = FakeKube()
    watched_lock(kube, proxy=False)

    async def end() -> None:
        await anyio.sleep(0.2)
        kube.deployments["hello"]["metadata"]["annotations"] = {}
        kube.deployments["hello"]["spec"]["replicas"] = 2

    dep, text = clear_way(kube, ttl=30, during=end)
    assert dep["metadata"]["annotations"] == {} and "restoring it first" not in text


def test_a_lock_bridge_cannot_trust_is_refused_by_the_lease_and_nothing_changes() -> None:
    from bridge.model.outcome import Outcome, final_message
    from bridge.swap.lease import clear_the_way

    kube = FakeKube()
    kube.add("hello", 2, forged(session="X"))  # not a session id bridge writes
    before = snapshot(kube)
    outcome = Outcome()
    with pytest.raises(BridgeError) as e:
        anyio.run(lambda: clear_the_way(kube, kube.deployments["hello"], ttl=60, bound=5,
                                        progress=Progress(stream=io.StringIO()),
                                        outcome=outcome))
    assert kube.deployments == before and "patch_deployment" not in kube.calls
    text = final_message(e.value, outcome)
    assert "cannot trust" in text and text.endswith("nothing was changed")


def test_the_drift_watch_speaks_once_and_only_while_the_original_should_be_at_zero() -> None:
    from bridge.model import controllers
    from bridge.swap.lease import Lease
    from tests.unit.support import locked

    kube = FakeKube()
    lk = locked(kube, replicas=2)
    out = io.StringIO()
    lease = Lease(kube, "hello", lk, Progress(stream=out), drift=controllers.DriftWatch())

    async def main() -> None:
        await lease.beat()  # still at 2: not armed, nothing to say
        assert "scaled to" not in out.getvalue()
        await lease.scale_original(0)
        kube.deployments["hello"]["spec"]["replicas"] = 3  # an autoscaler, say
        await lease.beat()
        await lease.beat()
        assert out.getvalue().count("was scaled to 3 during the session") == 1
        await lease.scale_original(2)  # the hand-back: scaling up is ours now

    anyio.run(main)


def test_scaling_after_a_look_writes_on_what_was_seen_without_reading_again() -> None:
    """One round trip for the hand-over's scaling: the write is conditional on the original as
    this session last saw it (its resourceVersion), so no read goes first; changed since (a
    colleague's restore), the write gets 409, the fresh read says NotOurs, nothing is
    written; a look that says nothing is needed is never trusted without a fresh read."""
    from bridge.swap.lease import Lease, NotOurs

    kube = FakeKube()
    lk = locked(kube)
    lease = Lease(kube, "hello", lk, Progress(stream=io.StringIO()))
    anyio.run(lease.still_ours)  # a heartbeat's look
    kube.calls.clear()
    anyio.run(lease.scale_original, 0)
    assert kube.calls == ["patch_deployment"]
    assert kube.deployments["hello"]["spec"]["replicas"] == 0

    kube.calls.clear()  # the write's answer is the last look now: scaling back, no read either
    anyio.run(lease.scale_original, 2)
    assert kube.calls == ["patch_deployment"]

    anyio.run(lease.still_ours)
    kube.deployments["hello"]["metadata"]["annotations"] = {}  # restored by someone since
    kube.rv += 1
    kube.deployments["hello"]["metadata"]["resourceVersion"] = str(kube.rv)
    kube.calls.clear()
    with pytest.raises(NotOurs):
        anyio.run(lease.scale_original, 0)
    assert kube.calls == ["patch_deployment", "get_deployment"]  # 409, then the fresh read
    assert kube.deployments["hello"]["spec"]["replicas"] == 2

    kube = FakeKube()
    lk = locked(kube)
    lease = Lease(kube, "hello", lk, Progress(stream=io.StringIO()))
    anyio.run(lease.still_ours)
    kube.deployments["hello"]["spec"]["replicas"] = 5  # scaled up by someone since the look
    anyio.run(lease.scale_original, 2)  # the look says 2 already: read again, then write
    assert kube.deployments["hello"]["spec"]["replicas"] == 2
