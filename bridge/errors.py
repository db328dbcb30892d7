"""The one exception type a user sees: a single line saying what was wrong and what was left."""

from __future__ import annotations


class BridgeError(Exception):
    """An error a user can cause or fix. `str(err)` is the whole one-line message.

    `exit_code` is what the `bridge` command exits with when this error ends it.
    """

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return " ".join(str(self.args[0]).split()) if self.args else ""


class NothingChanged(BridgeError):
    """A user error found before bridge changed anything; its message already says so, and the
    session adds nothing about the cluster to it."""
