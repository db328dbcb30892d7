"""The cleanup stack (bridge/cleanup.py): last in, first out; every step runs, even when
one fails or the scope is cancelled."""

from __future__ import annotations

import io

import anyio

from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError
from bridge.progress import Progress


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
