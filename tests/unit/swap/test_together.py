"""Requests sent at once (bridge/swap/together.py): all in flight together, each result in
its place, errors raised as they are (never grouped), the main call's error first."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from bridge.swap.together import at_once


class Gate:
    """Each call waits until all `n` are in flight (bounded: a serial caller fails, it does
    not hang), so a result at all proves they overlapped."""

    def __init__(self, n: int) -> None:
        self.n, self.entered, self.all_in = n, 0, anyio.Event()

    def call(self, value: object, error: Exception | None = None):  # type: ignore[no-untyped-def]
        async def run() -> object:
            self.entered += 1
            if self.entered == self.n:
                self.all_in.set()
            with anyio.fail_after(5):
                await self.all_in.wait()
            if error is not None:
                raise error
            return value
        return run


def test_all_calls_are_in_flight_together_and_results_keep_their_order() -> None:
    gate = Gate(3)
    main, sides = anyio.run(lambda: at_once(gate.call("m"), gate.call(1), gate.call(2)))
    assert (main, sides) == ("m", [1, 2])


def test_the_main_error_comes_first_and_cancels_the_sides() -> None:
    finished: list[str] = []

    async def side() -> None:
        await anyio.sleep(30)
        finished.append("side")

    async def main() -> None:
        await anyio.lowlevel.checkpoint()
        raise LookupError("the main one")

    with pytest.raises(LookupError, match="the main one"):
        anyio.run(lambda: at_once(main, side))
    assert finished == []


def test_a_side_error_waits_for_main_then_is_raised_as_it_is() -> None:
    gate = Gate(3)
    with pytest.raises(ValueError, match="first side"):
        anyio.run(lambda: at_once(gate.call("m"), gate.call(1, ValueError("first side")),
                                  gate.call(2, KeyError("second side"))))
    gate = Gate(2)
    with pytest.raises(RuntimeError, match="main"):
        anyio.run(lambda: at_once(gate.call("m", RuntimeError("main")),
                                  gate.call(1, ValueError("side"))))
