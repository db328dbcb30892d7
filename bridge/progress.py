"""Progress lines on stderr (never the child's stdout): what bridge does and waits for, how long.

`-q` keeps only warnings and errors, `-v` adds details; `--log-file` gets every line with a
timestamp whatever the verbosity.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2
STILL_WAITING_EVERY = 5.0


class Progress:
    def __init__(self, verbosity: int = NORMAL, log_file: str | None = None,
                 stream: TextIO | None = None) -> None:
        self.verbosity = verbosity
        self.stream = stream if stream is not None else sys.stderr
        self.log: TextIO | None = open(log_file, "a", encoding="utf-8") if log_file else None
        self.started = time.monotonic()

    def close(self) -> None:
        if self.log:
            self.log.close()
            self.log = None

    def _emit(self, level: int, text: str) -> None:
        if self.log:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
            try:
                self.log.write(f"{stamp} {text}\n")
                self.log.flush()
            except (OSError, ValueError):
                pass  # a full disk or a vanished log file must not break the restore either
        if level <= self.verbosity:
            try:
                self.stream.write(f"bridge: {text}\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed terminal must not break the restore

    def info(self, text: str) -> None:
        self._emit(NORMAL, text)

    def detail(self, text: str) -> None:
        self._emit(VERBOSE, text)

    def warn(self, text: str) -> None:
        self._emit(QUIET, f"warning: {text}")

    def error(self, text: str) -> None:
        self._emit(QUIET, f"error: {text}")

    def waiting(self, what: str) -> Waiter:
        """Say what bridge waits for; `tick()` in the poll loop repeats it with the elapsed time."""
        self.info(f"waiting for {what}")
        return Waiter(self, what)


class Waiter:
    def __init__(self, progress: Progress, what: str) -> None:
        self.progress = progress
        self.what = what
        self.start = self.last = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last >= STILL_WAITING_EVERY:
            self.last = now
            self.progress.info(f"still waiting for {self.what} ({self.elapsed():.0f}s)")

    def done(self, text: str | None = None) -> None:
        self.progress.detail(text or f"done waiting for {self.what} ({self.elapsed():.1f}s)")
