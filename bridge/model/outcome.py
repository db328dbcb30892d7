"""What a session did to the cluster, as a record; the final error line is built from it.

Never from searching message text: each phase records what it changed (or may have changed),
and `final_message` only reads the record and the error's type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.errors import BridgeError, NothingChanged


@dataclass
class Outcome:
    touched: bool = False  # the lock was (or may have been: no answer) taken
    repaired_stale: bool = False  # a dead session's swap was restored first
    failed_steps: list[str] = field(default_factory=list)  # undo steps that failed
    restored: bool | None = None  # None: no restore ran; else whether it completed

    @property
    def failed(self) -> bool:
        return bool(self.failed_steps) or self.restored is False


def final_message(error: BridgeError, outcome: Outcome) -> str:
    """The error line bridge ends with, saying what became of the cluster. A failed undo step
    wins: whatever was believed, something was left behind."""
    msg = str(error)
    if outcome.failed:
        return msg + "; restoring was incomplete, see the messages above"
    if isinstance(error, NothingChanged):
        return msg  # it says so itself
    if outcome.touched:
        return msg + "; the cluster was restored as it was"
    if outcome.repaired_stale:
        return msg + "; the stale session was restored, nothing else was changed"
    return msg + "; nothing was changed"
