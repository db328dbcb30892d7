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
