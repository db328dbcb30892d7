"""The LIFO cleanup stack: every undo step runs, whatever the others did."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bridge.progress import Progress


class CleanupStack:
    """Undo steps, run last-in first-out; a failing step is recorded and the others still run.
    Each `push` returns a handle that `discard` takes back (an undo that turned out needless)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self.failures: list[str] = []

    def push(self, what: str, step: Callable[[], Awaitable[Any]]) -> object:
        entry = (what, step)
        self.steps.append(entry)
        return entry

    def discard(self, handle: object) -> None:
        self.steps = [s for s in self.steps if s is not handle]

    async def unwind(self) -> None:
        while self.steps:
            what, step = self.steps.pop()
            try:
                await step()
            except Exception as e:  # one failing step must not skip the others
                self.failures.append(f"{what}: {e}")
                self.progress.error(f"{what} failed: {e}")
