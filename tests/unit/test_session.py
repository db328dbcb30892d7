"""The session's cleanup stack: LIFO, every step runs whatever the others do, even cancelled."""

from __future__ import annotations

import io

import anyio
import pytest

from bridge.errors import BridgeError
from bridge.progress import Progress
from bridge.session import CleanupStack, _first_bridge_error, pod_problem


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
    assert _first_bridge_error(eg) is inner
    assert _first_bridge_error(BaseExceptionGroup("g", [ValueError("x")])) is None


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

    from bridge.session import Link, Session, SwapOptions
    from bridge.target import PortMap
    from bridge.tunnel import ForwardRefused
    from tests.unit.test_tunnel import free_port, sidecar

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
                s = Session(SwapOptions(target="hello"), Progress(stream=out))
                s.ports = [PortMap(side.forward_port, local)]
                link = Link("pod", forwarder=None, tunnel=new)
                with pytest.raises(ForwardRefused):
                    await s._forward(link, patience=0.0)
                task = asyncio.create_task(s._forward(link, patience=60.0))
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


# -- decisions and the hand-over, with small stand-ins for the API and the tunnel -------------

def test_the_final_message_says_what_became_of_the_cluster() -> None:
    from bridge.session import final_message

    assert final_message("boom", touched=False, failed=False) == "boom; nothing was changed"
    assert final_message("boom", touched=True, failed=False) == \
        "boom; the cluster was restored as it was"
    assert final_message("boom", touched=True, failed=True) == \
        "boom; restoring was incomplete, see the messages above"
    # a failed step means something was changed, whatever was believed untouched
    assert final_message("boom", touched=False, failed=True) == \
        "boom; restoring was incomplete, see the messages above"
    said = "deployment/x is locked; nothing was changed"
    assert final_message(said, touched=False, failed=False) == said


def test_output_paths_are_checked_before_anything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bridge.session import output_path_problem

    assert output_path_problem("--env-file", str(tmp_path / "x.env")) is None
    assert output_path_problem("--env-file", "relative.env") is None  # the current directory
    missing = tmp_path / "nope" / "x.env"
    assert output_path_problem("--env-file", str(missing)) == \
        f"--env-file {missing}: directory {missing.parent} does not exist"
    assert output_path_problem("--env-json", str(tmp_path)) == \
        f"--env-json {tmp_path} is a directory"


def test_a_bad_env_file_fails_before_the_cluster_is_contacted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No kubeconfig is even read: the error comes first, and says nothing was changed."""
    from bridge.session import Session, SwapOptions

    bad = str(tmp_path / "missing" / "x.env")
    s = Session(SwapOptions(target="hello", env_file=bad, kubeconfig=str(tmp_path / "no-kc")),
                Progress(stream=io.StringIO()))
    with pytest.raises(BridgeError) as e:
        anyio.run(s.run)
    assert str(e.value) == (f"--env-file {bad}: directory {tmp_path / 'missing'} does not "
                            "exist; nothing was changed")


def test_the_command_gets_a_bounded_time_to_end_after_sigterm_sighup_or_a_second_ctrl_c() -> None:
    import signal

    from bridge.session import must_end

    assert must_end(signal.SIGTERM, 0)
    assert must_end(signal.SIGHUP, 0)
    assert not must_end(signal.SIGINT, 1)
    assert must_end(signal.SIGINT, 2)


class _Tunnel:
    def __init__(self, closed: bool = False) -> None:
        self.closed = closed

    def is_closed(self) -> bool:
        return self.closed


class _Child:
    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode


class _Kube:
    """Answers like an API server where the proxy pod never turns Ready."""

    def __init__(self, deployment: dict | None = None) -> None:  # type: ignore[type-arg]
        self.deployment = deployment or {}
        self.patches: list[dict] = []  # type: ignore[type-arg]
        self.conflicts = 0

    async def list_pods(self, selector: str) -> list[dict]:  # type: ignore[type-arg]
        return [{"metadata": {"name": "proxy-pod"},
                 "status": {"phase": "Running", "conditions": [
                     {"type": "Ready", "status": "False"}]}}]

    async def get_deployment(self, name: str) -> dict:  # type: ignore[type-arg]
        return self.deployment

    async def patch_deployment(self, name: str, patch: dict) -> dict:  # type: ignore[type-arg]
        self.patches.append(patch)
        if self.conflicts:
            from bridge.kube import ApiError
            self.conflicts -= 1
            raise ApiError("conflict", 409)
        return {}


def _session(kube: _Kube):  # type: ignore[no-untyped-def]
    from bridge.session import Session, SwapOptions

    s = Session(SwapOptions(target="hello"), Progress(stream=io.StringIO()))
    s.kube = kube  # type: ignore[assignment]
    s.name = "hello"
    s.session_id = "abcd"
    s.container = "web"
    return s


def test_waiting_for_the_proxy_to_be_ready_stops_when_the_command_exits() -> None:
    from bridge.session import CHILD_EXITED, Link

    s = _session(_Kube())
    s.child = _Child(returncode=130)  # Ctrl-C was passed to it, and it exited

    async def main() -> str:
        with anyio.fail_after(10):
            return await s._wait_proxy_ready(Link("proxy-pod", None, _Tunnel()))

    assert anyio.run(main) == CHILD_EXITED


def test_waiting_for_the_proxy_to_be_ready_stops_when_the_tunnel_closes() -> None:
    from bridge.session import TUNNEL_CLOSED, Link

    s = _session(_Kube())

    async def main() -> str:
        with anyio.fail_after(10):
            return await s._wait_proxy_ready(Link("proxy-pod", None, _Tunnel(closed=True)))

    assert anyio.run(main) == TUNNEL_CLOSED


def test_a_tunnel_lost_while_waiting_for_ready_is_reconnected_with_patience() -> None:
    """The tunnel drops after the forwards, while the proxy turns Ready: bridge reconnects,
    forwards again waiting for the sidecar to release the old ports, and waits for Ready on
    the new link."""
    from bridge.session import FORWARD_PATIENCE, READY, TUNNEL_CLOSED, Link

    s = _session(_Kube())
    s.child = _Child(returncode=None)
    first, second = Link("pod-1", None, _Tunnel()), Link("pod-1", None, _Tunnel())
    s.link = first
    forwards: list[tuple[str, float]] = []
    readies: list[Link] = []

    async def forward(link: Link, patience: float = 0.0) -> None:
        forwards.append((str(id(link)), patience))

    async def wait_ready(link: Link) -> str:
        readies.append(link)
        if link is first:
            first.tunnel.closed = True
            return TUNNEL_CLOSED
        s.child.returncode = 0  # ends the hand-over before the scaling
        return READY

    async def reconnect(old: Link) -> Link:
        assert old is first
        s.link = second
        return second

    s._forward = forward  # type: ignore[method-assign]
    s._wait_proxy_ready = wait_ready  # type: ignore[method-assign]
    s._reconnect_for_hand_over = reconnect  # type: ignore[method-assign]
    anyio.run(s._hand_over)
    assert forwards == [(str(id(first)), 0.0), (str(id(second)), FORWARD_PATIENCE)]
    assert readies == [first, second]


def test_a_tunnel_that_keeps_dropping_during_the_hand_over_fails_clearly() -> None:
    from bridge.session import HAND_OVER_ATTEMPTS, TUNNEL_CLOSED, Link

    s = _session(_Kube())
    s.link = Link("pod-1", None, _Tunnel())
    reconnects = 0

    async def forward(link: Link, patience: float = 0.0) -> None:
        pass

    async def wait_ready(link: Link) -> str:
        link.tunnel.closed = True
        return TUNNEL_CLOSED

    async def reconnect(old: Link) -> Link:
        nonlocal reconnects
        reconnects += 1
        return Link("pod-1", None, _Tunnel())

    s._forward = forward  # type: ignore[method-assign]
    s._wait_proxy_ready = wait_ready  # type: ignore[method-assign]
    s._reconnect_for_hand_over = reconnect  # type: ignore[method-assign]
    with pytest.raises(BridgeError, match="dropped 3 times during the hand-over"):
        anyio.run(s._hand_over)
    assert reconnects == HAND_OVER_ATTEMPTS - 1


def _locked(session: str, rv: str) -> dict:  # type: ignore[type-arg]
    import datetime as dt

    from bridge import state

    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    lock = state.Lock(session=session, owner="me@here", replicas=2, proxy="p", ports="80",
                      started_at=t, heartbeat=t)
    return {"metadata": {"resourceVersion": rv, "annotations": state.encode(lock)}}


def test_the_original_is_scaled_to_zero_only_while_the_lock_is_ours() -> None:
    from bridge.session import NotOurs

    kube = _Kube({"metadata": {"resourceVersion": "7", "annotations": {}}})  # restored by someone
    s = _session(kube)
    s.lock = _lock_of("abcd")
    with pytest.raises(NotOurs):
        anyio.run(s._scale_original_to_zero)
    assert kube.patches == []

    kube = _Kube(_locked("abcd", "8"))
    kube.conflicts = 1  # the heartbeat patched it in between: read again, patch again
    s = _session(kube)
    s.lock = _lock_of("abcd")
    anyio.run(s._scale_original_to_zero)
    assert kube.patches == [{"spec": {"replicas": 0}, "metadata": {"resourceVersion": "8"}}] * 2


def _lock_of(session: str):  # type: ignore[no-untyped-def]
    from bridge import state

    return state.decode(_locked(session, "1")["metadata"]["annotations"])
