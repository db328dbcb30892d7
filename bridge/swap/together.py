"""Requests that do not depend on each other, sent at once: one round trip to the API server
for all of them instead of one each (the swap's set-up is counted in round trips: make bench).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


async def at_once(main: Callable[[], Awaitable[T]],
                  *sides: Callable[[], Awaitable[Any]]) -> tuple[T, list[Any]]:
    """`main()` and each of `sides` at the same time: (main's result, the sides' results in
    order). Errors are raised as they are (never grouped): main's first (it cancels the
    sides: its error is the one that says what went wrong), else the first side's in order,
    once all are done."""
    results: dict[int, Any] = {}
    errors: dict[int, Exception] = {}

    async def one(i: int, call: Callable[[], Awaitable[Any]],
                  scope: anyio.CancelScope) -> None:
        try:
            results[i] = await call()
        except Exception as e:  # noqa: BLE001 - raised again below, outside the task group
            errors[i] = e
            if i == 0:
                scope.cancel()

    async with anyio.create_task_group() as tg:
        for i, call in enumerate((main, *sides)):
            tg.start_soon(one, i, call, tg.cancel_scope)
    if errors:
        raise errors[min(errors)]
    return results[0], [results[i] for i in range(1, len(sides) + 1)]
