"""Traffic during a fault: HTTP requests to the Service every ``interval`` seconds, and
optionally bulk transfers back to back, each recorded with when it started, ended and who
answered (``laptop``, ``cluster``) or ``fail``."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

LAPTOP = "laptop"
CLUSTER = "cluster"
FAIL = "fail"


@dataclass(frozen=True)
class Sample:
    start: float  # time.monotonic()
    end: float
    outcome: str  # LAPTOP, CLUSTER or FAIL
    detail: str = ""


def http_get(host: str, port: int, timeout: float) -> str:
    """Who answered one ``GET /`` over a new connection: LAPTOP or CLUSTER (raises OSError)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"GET / HTTP/1.0\r\nHost: faults\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise OSError(f"bad HTTP response {data[:60]!r}")
    if body.startswith(b"laptop"):
        return LAPTOP
    if body.startswith(b"cluster"):
        return CLUSTER
    raise OSError(f"unexpected body {body[:40]!r}")


def download(host: str, port: int, nbytes: int, timeout: float) -> None:
    """A bulk download from the laptop's workload server (tests/equipment/bench/server.py ``D``)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"D" + struct.pack(">Q", nbytes))
        left = nbytes
        while left:
            chunk = s.recv(min(left, 262144))
            if not chunk:
                raise OSError(f"transfer cut {left} bytes short")
            left -= len(chunk)


class Prober:
    """Background traffic to ``host:port``; ``samples`` grows while it runs."""

    def __init__(self, host: str, port: int, *, interval: float = 0.1, timeout: float = 2.0,
                 transfer_bytes: int = 0) -> None:
        self.host, self.port = host, port
        self.interval, self.timeout = interval, timeout
        self.transfer_bytes = transfer_bytes
        self.samples: list[Sample] = []
        self.transfers: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._requests, daemon=True)]
        if transfer_bytes:
            self._threads.append(threading.Thread(target=self._transfers, daemon=True))

    def _requests(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                who, detail = http_get(self.host, self.port, self.timeout), ""
            except OSError as exc:
                who, detail = FAIL, f"{type(exc).__name__}: {exc}"
            self.samples.append(Sample(t0, time.monotonic(), who, detail))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def _transfers(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                download(self.host, self.port, self.transfer_bytes, self.timeout * 5)
                who, detail = LAPTOP, ""
            except OSError as exc:
                who, detail = FAIL, f"{type(exc).__name__}: {exc}"
                self._stop.wait(self.interval)
            self.transfers.append(Sample(t0, time.monotonic(), who, detail))

    def __enter__(self) -> Prober:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout * 6)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def recovery(samples: Sequence[Sample], since: float, want: Sequence[str],
             stable: int = 5) -> float | None:
    """The start time of the first of ``stable`` consecutive samples started at or after
    ``since`` whose outcome is in ``want``, after which none failed; None if there is none.
    (A run of good samples interrupted by a failure does not count.)"""
    later = [s for s in samples if s.start >= since]
    run_start: float | None = None
    count = 0
    for s in later:
        if s.outcome in want:
            if run_start is None:
                run_start = s.start
            count += 1
        else:
            run_start, count = None, 0
    return run_start if run_start is not None and count >= stable else None


def failures(samples: Sequence[Sample], start: float, end: float | None) -> int:
    """Samples that failed and overlapped [start, end] (end None: to the last sample)."""
    return sum(1 for s in samples if s.outcome == FAIL and s.end >= start
               and (end is None or s.start <= end))
