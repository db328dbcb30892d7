"""The session's parts without a cluster: the cleanup stack (LIFO, every step runs, even
cancelled), the link's forwards, the hand-over and hand-back against fakes of the API and the
link, the lease's conditional writes, the final message built from the Outcome record."""

from __future__ import annotations

import copy
import io
from typing import Any

import anyio
import pytest

from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError
from bridge.progress import Progress
from bridge.swap.link import pod_problem
from bridge.swap.session import first_bridge_error
from tests.unit.support import FakeKube, api_error


def test_steps_run_last_in_first_out_and_failures_do_not_skip_others() -> None:
    out = io.StringIO()
    stack = CleanupStack(Progress(stream=out))
    ran: list[str] = []

    def step(name: str, fail: bool = False):  # type: ignore[no-untyped-def]
        async def run() -> None:
            ran.append(name)
            if fail:
                raise BridgeError(f"{name} broke")
        return run

    stack.push("close api", step("api"))
    stack.push("restore", step("restore", fail=True))
    stack.push("stop child", step("child"))
    anyio.run(stack.unwind)
    assert ran == ["child", "restore", "api"]
    assert stack.failures == ["restore: restore broke"]
    assert "error: restore failed: restore broke" in out.getvalue()
    anyio.run(stack.unwind)  # nothing left: unwinding twice runs nothing twice
    assert ran == ["child", "restore", "api"]


def test_unwind_in_a_shielded_scope_survives_cancellation() -> None:
    stack = CleanupStack(Progress(stream=io.StringIO()))
    ran: list[str] = []

    async def slow() -> None:
        await anyio.sleep(0.05)
        ran.append("restored")

    stack.push("restore", slow)

    async def main() -> None:
        with anyio.CancelScope() as scope:
            try:
                scope.cancel()
                await anyio.sleep(10)
            finally:
                with anyio.CancelScope(shield=True):
                    await stack.unwind()

    anyio.run(main)
    assert ran == ["restored"]


def test_first_bridge_error_in_nested_groups() -> None:
    inner = BridgeError("the one")
    eg = BaseExceptionGroup("outer", [ValueError("x"), BaseExceptionGroup("inner", [inner])])
    assert first_bridge_error(eg) is inner
    assert first_bridge_error(BaseExceptionGroup("g", [ValueError("x")])) is None


@pytest.mark.parametrize("verbosity,shown", [(0, ["warning"]), (1, ["info", "warning"]),
                                             (2, ["info", "detail", "warning"])])
def test_progress_levels(verbosity: int, shown: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    log = tmp_path / "log"
    p = Progress(verbosity, str(log), stream=out)
    p.info("info")
    p.detail("detail")
    p.warn("warning")
    p.close()
    assert [ln.split(": ")[-1] for ln in out.getvalue().splitlines()] == shown
    assert len(log.read_text().splitlines()) == 3  # the log file gets everything


def _sidecar_status(state: dict, last: dict | None = None) -> dict:  # type: ignore[type-arg]
    cs = {"name": "web", "state": state, "restartCount": 1 if last else 0}
    if last:
        cs["lastState"] = last
    return {"status": {"phase": "Running", "containerStatuses": [cs]}}


def test_a_sidecar_that_crashed_once_fails_the_start_but_not_a_reconnect() -> None:
    crashed_then_running = _sidecar_status(
        {"running": {}}, {"terminated": {"exitCode": 137, "reason": "Error"}})
    assert pod_problem(crashed_then_running, "web", past=True) == \
        "the sidecar exited with code 137 (Error)"
    assert pod_problem(crashed_then_running, "web", past=False) == ""
    dead_now = _sidecar_status({"terminated": {"exitCode": 1, "reason": "Error"}})
    assert pod_problem(dead_now, "web", past=False) == "the sidecar exited with code 1 (Error)"
    backoff = _sidecar_status({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                              {"terminated": {"exitCode": 137}})
    assert pod_problem(backoff, "web", past=False) == "CrashLoopBackOff: back-off"
    assert pod_problem(_sidecar_status({"running": {}}), "web", past=True) == ""
    assert pod_problem(_sidecar_status({"running": {}}, {"terminated": {"exitCode": 2}}),
                       "other", past=True) == ""


def test_a_reconnect_waits_for_the_sidecar_to_release_the_ports() -> None:
    """The real sidecar still holds the port for a connection the agent gave up on; the new
    connection's forward is retried until the old one is gone, then traffic flows through it.
    Without patience the refusal is immediate."""
    import asyncio

    from bridge.model.target import PortMap
    from bridge.swap.link import Link
    from bridge.transport.tunnel import ForwardRefused
    from tests.unit.support import free_port, sidecar

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"laptop:" + await reader.readline())
        await writer.drain()
        writer.close()

    async def main() -> None:
        local = free_port()
        server = await asyncio.start_server(answer, "127.0.0.1", local)
        out = io.StringIO()
        async with sidecar() as side:
            old = await side.connect()
            await old.forward(side.forward_port, "127.0.0.1", local)
            new = await side.connect()
            try:
                linker = make_linker(FakeKube(), [PortMap(side.forward_port, local)],
                                     Progress(stream=out))
                link = Link("pod", forwarder=None, tunnel=new)
                with pytest.raises(ForwardRefused):
                    await linker.forward(link, patience=0.0)
                task = asyncio.create_task(linker.forward(link, patience=60.0))
                async with asyncio.timeout(30):
                    while "to release port" not in out.getvalue():  # noqa: ASYNC110 - polls a buffer
                        await asyncio.sleep(0.05)
                assert not task.done()
                await old.close()  # the sidecar lets the port go with the old connection
                async with asyncio.timeout(30):
                    await task
                reader, writer = await asyncio.open_connection("127.0.0.1", side.forward_port)
                writer.write(b"hello\n")
                async with asyncio.timeout(30):
                    assert await reader.read() == b"laptop:hello\n"
                writer.close()
            finally:
                await new.close()
                await old.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 120))


# -- stand-ins: the API (tests.unit.support.FakeKube) and the link ---------------------------

def make_linker(kube: FakeKube, ports: list, progress: Progress | None = None):  # type: ignore[no-untyped-def,type-arg]
    from bridge.swap.link import Linker, LinkSpec

    async def ours() -> None:
        pass

    return Linker(kube, lambda pod: None, LinkSpec("abcd", "web", 8022, None, ports),
                  progress or Progress(stream=io.StringIO()), ours)


class FakeTunnel:
    def __init__(self, closed: bool = False) -> None:
        self.closed = closed
        self.withdrawn = False
        self.last_forwarded = 0.0  # no connection came through the tunnel

    def is_closed(self) -> bool:
        return self.closed

    async def withdraw(self) -> None:
        self.withdrawn = True


class FakeLinker:
    """Stands in for link.Linker in the hand-over and hand-back: records what was asked."""

    def __init__(self, links: list, log: list[str] | None = None) -> None:  # type: ignore[type-arg]
        from bridge.swap.link import LinkSpec

        self.links = links
        self.current = links[0]
        self.spec = LinkSpec("abcd", "web", 8022, None, [])
        self.forwards: list[tuple[object, float]] = []
        self.reconnects = 0
        self.close_after_forward: set[int] = set()
        self.log = log if log is not None else []

    async def reconnect(self, old, *, forward: bool, within: float | None):  # type: ignore[no-untyped-def]
        assert old is self.current and not forward
        self.reconnects += 1
        self.current = self.links[min(self.reconnects, len(self.links) - 1)]
        return self.current

    async def forward(self, link, patience: float = 0.0) -> None:  # type: ignore[no-untyped-def]
        self.forwards.append((link, patience))
        if id(link) in self.close_after_forward:
            link.tunnel.closed = True

    async def check_pod(self, pod) -> None:  # type: ignore[no-untyped-def]
        pass

    async def withdraw(self) -> bool:
        self.log.append("withdraw")
        await self.current.tunnel.withdraw()
        return True


def ready_pod(name: str = "proxy-pod", ready: bool = True, ip: str = "10.0.0.9") -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": name, "labels": {"bridge-k8s.io/session": "abcd"}},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def locked(kube: FakeKube, session: str = "abcd", replicas: int = 2):  # type: ignore[no-untyped-def]
    import datetime as dt

    from bridge.model import state

    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    lk = state.Lock(session=session, owner="me@here", replicas=replicas, proxy="hello-bridge",
                    ports="80", started_at=t)
    kube.add("hello", replicas, state.encode(lk))
    return lk


def hand_over(kube: FakeKube, linker: FakeLinker, stop=lambda: False):  # type: ignore[no-untyped-def]
    from bridge.swap.handover import HandOver
    from bridge.swap.lease import Lease

    lk = locked(kube)
    progress = Progress(stream=io.StringIO())
    return HandOver(kube, linker, Lease(kube, "hello", lk, progress), {},  # type: ignore[arg-type]
                    progress, 10.0, stop)


def test_waiting_for_the_proxy_to_be_ready_stops_when_the_command_exits() -> None:
    from bridge.swap.handover import STOPPED
    from bridge.swap.link import Link

    kube = FakeKube()
    kube.pods = [ready_pod(ready=False)]
    h = hand_over(kube, FakeLinker([Link("proxy-pod", None, FakeTunnel())]), stop=lambda: True)

    async def main() -> str:
        with anyio.fail_after(10):
            return await h.wait_proxy_ready(Link("proxy-pod", None, FakeTunnel()))

    assert anyio.run(main) == STOPPED


def test_waiting_for_the_proxy_to_be_ready_stops_when_the_tunnel_closes() -> None:
    from bridge.swap.handover import TUNNEL_CLOSED
    from bridge.swap.link import Link

    kube = FakeKube()
    kube.pods = [ready_pod(ready=False)]
    h = hand_over(kube, FakeLinker([Link("proxy-pod", None, FakeTunnel())]))

    async def main() -> str:
        with anyio.fail_after(10):
            return await h.wait_proxy_ready(Link("proxy-pod", None, FakeTunnel(closed=True)))

    assert anyio.run(main) == TUNNEL_CLOSED


def test_a_tunnel_lost_while_waiting_for_ready_is_reconnected_with_patience() -> None:
    """The tunnel drops after the forwards, while the proxy turns Ready: bridge reconnects,
    forwards again waiting for the sidecar to release the old ports, waits for Ready on the new
    link, then scales the original to zero."""
    from bridge.swap.link import FORWARD_PATIENCE, Link

    kube = FakeKube()
    kube.pods = [ready_pod()]
    first, second = Link("proxy-pod", None, FakeTunnel()), Link("proxy-pod", None, FakeTunnel())
    linker = FakeLinker([first, second])
    linker.close_after_forward.add(id(first))
    h = hand_over(kube, linker)
    assert anyio.run(h.run) is True
    assert linker.forwards == [(first, 0.0), (second, FORWARD_PATIENCE)]
    assert kube.deployments["hello"]["spec"]["replicas"] == 0


def test_a_tunnel_that_keeps_dropping_during_the_hand_over_fails_clearly() -> None:
    from bridge.swap.handover import HAND_OVER_ATTEMPTS
    from bridge.swap.link import Link

    kube = FakeKube()
    kube.pods = [ready_pod(ready=False)]
    links = [Link("proxy-pod", None, FakeTunnel()) for _ in range(HAND_OVER_ATTEMPTS)]
    linker = FakeLinker(links)
    linker.close_after_forward.update(id(link) for link in links)
    h = hand_over(kube, linker)
    with pytest.raises(BridgeError, match="dropped 3 times during the hand-over"):
        anyio.run(h.run)
    assert linker.reconnects == HAND_OVER_ATTEMPTS - 1
    assert kube.deployments["hello"]["spec"]["replicas"] == 2  # the original never left


def test_a_command_gone_during_the_hand_over_keeps_the_original_serving() -> None:
    from bridge.swap.link import Link

    kube = FakeKube()
    kube.pods = [ready_pod()]
    h = hand_over(kube, FakeLinker([Link("proxy-pod", None, FakeTunnel())]), stop=lambda: True)
    assert anyio.run(h.run) is False
    assert kube.deployments["hello"]["spec"]["replicas"] == 2


def test_the_original_is_scaled_only_while_the_lock_is_ours() -> None:
    from bridge.model import state
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
    from bridge.model import state
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


def test_hand_back_brings_the_original_back_before_withdrawing_the_proxy() -> None:
    """Both serve for a moment: the original is scaled up and Ready first, then the sidecar is
    told to fail its readiness, then bridge waits for the proxy to leave the endpoints."""
    from bridge.swap import handback
    from bridge.swap.lease import Lease
    from bridge.swap.link import Link

    kube = FakeKube()
    lk = locked(kube)
    kube.deployments["hello"]["spec"]["replicas"] = 0  # swapped
    log: list[str] = []
    kube.on_patch = lambda name, patch: log.append(f"patch {patch.get('spec')}")
    kube.pods = [ready_pod()]
    kube.services = [{"metadata": {"name": "hello"}, "spec": {"selector": {"app": "hello"}}}]
    kube.endpoints["hello"] = {"subsets": [{"addresses": [{"ip": "10.0.0.9"}]}]}
    tunnel = FakeTunnel()
    linker = FakeLinker([Link("proxy-pod", None, tunnel)], log)

    async def proxy_leaves() -> None:  # the endpoints controller, once the pod is not Ready
        while not tunnel.withdrawn:  # noqa: ASYNC110 - polls the fake's flag
            await anyio.sleep(0.01)
        log.append("proxy out of the endpoints")
        kube.endpoints["hello"] = {"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]}

    async def main() -> None:
        progress = Progress(stream=io.StringIO())
        async with anyio.create_task_group() as tg:
            tg.start_soon(proxy_leaves)
            manifest = {"spec": {"template": {"metadata": {"labels": {"app": "hello"}}}}}
            with anyio.fail_after(20):
                await handback.hand_back(kube, Lease(kube, "hello", lk, progress),
                                         linker, manifest, progress, 10.0)  # type: ignore[arg-type]
        log.append("hand-back done")

    anyio.run(main)
    assert log == ["patch {'replicas': 2}", "withdraw", "proxy out of the endpoints",
                   "hand-back done"]


def test_the_final_message_is_built_from_the_outcome() -> None:
    from bridge.errors import NothingChanged
    from bridge.model.outcome import Outcome, final_message

    boom = BridgeError("boom")
    assert final_message(boom, Outcome()) == "boom; nothing was changed"
    assert final_message(boom, Outcome(touched=True)) == \
        "boom; the cluster was restored as it was"
    assert final_message(boom, Outcome(touched=True, restored=False)) == \
        "boom; restoring was incomplete, see the messages above"
    # a failed step means something was changed, whatever was believed untouched
    assert final_message(boom, Outcome(failed_steps=["x: y"])) == \
        "boom; restoring was incomplete, see the messages above"
    assert final_message(boom, Outcome(repaired_stale=True)) == \
        "boom; the stale session was restored, nothing else was changed"
    said = NothingChanged("deployment/x not found; nothing was changed")
    assert final_message(said, Outcome()) == str(said)
    # the text alone decides nothing: a plain error that happens to say it still gets the truth
    plain = BridgeError("proxy said: nothing was changed")
    assert final_message(plain, Outcome(touched=True)).endswith("restored as it was")


def test_output_paths_are_checked_before_anything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bridge.local.envout import output_path_problem

    assert output_path_problem("--env-file", str(tmp_path / "x.env")) is None
    assert output_path_problem("--env-file", "relative.env") is None  # the current directory
    missing = tmp_path / "nope" / "x.env"
    assert output_path_problem("--env-file", str(missing)) == \
        f"--env-file {missing}: directory {missing.parent} does not exist"
    assert output_path_problem("--env-json", str(tmp_path)) == \
        f"--env-json {tmp_path} is a directory"


def test_a_bad_env_file_fails_before_the_cluster_is_contacted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No kubeconfig is even read: the error comes first, and says nothing was changed."""
    from bridge.swap.session import Session, SwapOptions

    bad = str(tmp_path / "missing" / "x.env")
    s = Session(SwapOptions(target="hello", env_file=bad, kubeconfig=str(tmp_path / "no-kc")),
                Progress(stream=io.StringIO()))
    with pytest.raises(BridgeError) as e:
        anyio.run(s.run)
    assert str(e.value) == (f"--env-file {bad}: directory {tmp_path / 'missing'} does not "
                            "exist; nothing was changed")


def test_the_command_environment_names_the_session() -> None:
    from bridge.local.envout import SESSION_VAR, child_environment

    env = child_environment({"GREETING": "hi", "PATH": "/pod/bin"}, "abcd")
    assert env["GREETING"] == "hi" and env[SESSION_VAR] == "abcd"


def test_the_reconnect_policy_is_bounded_when_asked_and_ends_when_the_lease_is_gone() -> None:
    """One policy for both users: the hand-over gives it a bound; the watchdog none, and then
    only a lost lease (or proxy) ends it."""
    from bridge.swap.lease import NotOurs
    from bridge.swap.link import Link, Linker, LinkSpec

    closed: list[str] = []

    class Old:
        async def close(self) -> None:
            closed.append("old")

    kube = FakeKube()  # no proxy pod ever comes back

    async def fine() -> None:
        pass

    async def gone() -> None:
        raise NotOurs("proxy deployment/p was deleted while swapped")

    def linker(still_ours):  # type: ignore[no-untyped-def]
        return Linker(kube, lambda pod: None, LinkSpec("abcd", "web", 8022, None, []),
                      Progress(stream=io.StringIO()), still_ours)

    old = Link("pod", Old(), Old())
    bounded = linker(fine)
    with pytest.raises(BridgeError, match="reconnecting to the proxy pod"):
        anyio.run(lambda: bounded.reconnect(old, forward=False, within=0.5))
    assert closed == ["old", "old"] and bounded.current is None and bounded.reconnected

    unbounded = linker(gone)

    async def watchdog() -> None:
        with anyio.fail_after(30):  # bounds a hang; NotOurs comes at the first check (2 s)
            await unbounded.reconnect(Link("pod", Old(), Old()), forward=True, within=None)

    with pytest.raises(NotOurs):
        anyio.run(watchdog)


# -- a second swap finding a lock: the session's heartbeat watched on this machine's clock ----

def _watched_lock(kube: FakeKube, *, proxy: bool):  # type: ignore[no-untyped-def]
    import datetime as dt

    from bridge.model import state
    from tests.unit.swap.test_restore import add_proxy

    # the holder's clock is an hour ahead: it must not matter
    t = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    lk = state.Lock(session="s1", owner="ann@laptop", replicas=2, proxy="hello-bridge-s1",
                    ports="80", started_at=t)
    kube.add("hello", 0, state.encode(lk))
    if proxy:
        add_proxy(kube, lk)
        kube.deployments[lk.proxy]["metadata"]["annotations"].update(
            state.beat_annotations(7, t))
    return lk


def _clear(kube: FakeKube, ttl: float, during=None):  # type: ignore[no-untyped-def]
    from bridge.model.outcome import Outcome
    from bridge.swap.lease import clear_the_way

    out = io.StringIO()

    async def main():  # type: ignore[no-untyped-def]
        async with anyio.create_task_group() as tg:
            if during is not None:
                tg.start_soon(during)
            try:
                return await clear_the_way(kube, await kube.get_deployment("hello"), ttl=ttl,
                                           bound=5, progress=Progress(stream=out),
                                           outcome=Outcome())
            finally:
                tg.cancel_scope.cancel()

    try:
        return anyio.run(main), out.getvalue()
    except BaseExceptionGroup as eg:
        e = first_bridge_error(eg)
        if e is None:
            raise
        e.add_note(out.getvalue())
        raise e from None


def test_a_second_swap_is_refused_when_the_heartbeat_changes() -> None:
    from bridge.model import state

    kube = FakeKube()
    lk = _watched_lock(kube, proxy=True)

    async def beat() -> None:
        await anyio.sleep(0.2)
        kube.deployments[lk.proxy]["metadata"]["annotations"][state.HEARTBEAT] = "8"

    with pytest.raises(BridgeError, match="already swapped by ann@laptop") as e:
        _clear(kube, ttl=30, during=beat)
    assert ("deployment/hello is locked by ann@laptop (session s1); checking whether that "
            "session is alive (up to 30s)") in "".join(e.value.__notes__)
    assert lk.proxy in kube.deployments and kube.deployments["hello"]["spec"]["replicas"] == 0


def test_a_second_swap_repairs_a_session_whose_heartbeat_stayed_the_same_for_the_ttl() -> None:
    kube = FakeKube()
    lk = _watched_lock(kube, proxy=True)
    dep, text = _clear(kube, ttl=0.5)
    assert "whose heartbeat did not change for 0s; restoring it first" in text
    assert lk.proxy not in kube.deployments
    assert kube.deployments["hello"]["spec"]["replicas"] == 2
    assert dep["metadata"]["annotations"] == {}


class SlowKube(FakeKube):
    """An API server a link away: read number i (from 0) takes delays[i] seconds, then none."""

    def __init__(self, delays: list[float]) -> None:
        super().__init__()
        self.delays = delays

    async def get_deployment(self, name: str) -> dict[str, Any]:
        if self.delays:
            await anyio.sleep(self.delays.pop(0))
        return await super().get_deployment(name)


def test_a_dead_session_is_repaired_even_when_every_look_takes_time() -> None:
    """The TTL is counted from the first look's answer, not from before it was asked: a slow
    first look (here 0.3 s of a 0.5 s TTL: a new connection's handshakes) must not end the
    watch "still watching", which refused the swap as if the dead session were alive (CI
    failure: "already swapped by ..." after SIGKILL in the restore, BRIDGE_HEARTBEAT_TTL=2)."""
    # the swap's own read, then the first look's (a new connection's handshakes)
    kube = SlowKube([0.0, 0.3])
    lk = _watched_lock(kube, proxy=True)
    dep, text = _clear(kube, ttl=0.5)
    assert "restoring it first" in text
    assert lk.proxy not in kube.deployments
    assert kube.deployments["hello"]["spec"]["replicas"] == 2


def test_no_proxy_yet_is_not_stale_at_once_and_its_creation_is_a_sign_of_life() -> None:
    from bridge.model import state
    from tests.unit.swap.test_restore import add_proxy

    kube = FakeKube()
    lk = _watched_lock(kube, proxy=False)

    async def create_proxy() -> None:
        await anyio.sleep(0.2)
        add_proxy(kube, lk)
        kube.deployments[lk.proxy]["metadata"]["annotations"][state.HEARTBEAT] = "0"

    with pytest.raises(BridgeError, match="already swapped by ann@laptop"):
        _clear(kube, ttl=30, during=create_proxy)
    # and a lock whose proxy never comes is stale after the TTL
    kube2 = FakeKube()
    _watched_lock(kube2, proxy=False)
    _dep, text = _clear(kube2, ttl=0.5)
    assert "restoring it first" in text and kube2.deployments["hello"]["spec"]["replicas"] == 2


def test_a_heartbeat_on_a_proxy_that_is_not_provably_the_sessions_is_no_sign_of_life() -> None:
    from bridge.model import state

    kube = FakeKube()
    lk = _watched_lock(kube, proxy=True)
    kube.deployments[lk.proxy]["metadata"]["ownerReferences"] = []  # a look-alike

    async def beat() -> None:
        for n in range(8, 100):
            await anyio.sleep(0.05)
            if lk.proxy in kube.deployments:
                kube.deployments[lk.proxy]["metadata"]["annotations"][state.HEARTBEAT] = str(n)

    with pytest.raises(BridgeError):  # judged stale, and then its repair refuses the look-alike
        _clear(kube, ttl=0.5, during=beat)


def test_a_session_of_the_previous_version_beating_on_the_original_is_alive() -> None:
    """A lock written by an earlier bridge: no heartbeat on its proxy, but the heartbeat time
    in the lock changes (compared for equality only, never with a clock)."""
    from bridge.model import state

    kube = FakeKube()
    lk = _watched_lock(kube, proxy=True)
    del kube.deployments[lk.proxy]["metadata"]["annotations"][state.HEARTBEAT]
    kube.deployments["hello"]["metadata"]["annotations"][state.HEARTBEAT] = \
        "2020-01-01T00:00:00Z"  # years behind: no matter

    async def beat() -> None:
        await anyio.sleep(0.2)
        kube.deployments["hello"]["metadata"]["annotations"][state.HEARTBEAT] = \
            "2020-01-01T00:00:10Z"

    with pytest.raises(BridgeError, match="already swapped by ann@laptop"):
        _clear(kube, ttl=30, during=beat)


def test_a_session_that_ends_while_watched_lets_the_swap_proceed() -> None:
    kube = FakeKube()
    _watched_lock(kube, proxy=False)

    async def end() -> None:
        await anyio.sleep(0.2)
        kube.deployments["hello"]["metadata"]["annotations"] = {}
        kube.deployments["hello"]["spec"]["replicas"] = 2

    dep, text = _clear(kube, ttl=30, during=end)
    assert dep["metadata"]["annotations"] == {} and "restoring it first" not in text
