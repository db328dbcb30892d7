"""Processes the benchmark starts: spawn, read their output, stop them (and their trees), RSS.

Every child gets its own session (a terminal Ctrl-C reaches only the benchmark, which then
stops them in order) and PR_SET_PDEATHSIG, so a benchmark killed with SIGKILL leaves nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import psutil

PR_SET_PDEATHSIG = 1
_STARTED: list[Proc] = []  # every child, for the last-resort sweep in stop_all()


def _child_setup() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose stdout+stderr lines are collected by a reader thread."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.lines: list[str] = []
        self.port = 0  # set by whoever learns which port it listens on
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.popen = subprocess.Popen(
            self.argv, env=dict(env) if env is not None else None, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, start_new_session=True, preexec_fn=_child_setup,
        )
        self.pid = self.popen.pid
        _STARTED.append(self)
        threading.Thread(target=self._pump, daemon=True, name=f"out-{name}").start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_line(self, match: Callable[[str], bool], timeout: float) -> str:
        """The first (not yet consumed) output line for which ``match`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: timed out after {timeout:.0f}s; "
                                   f"output: {self.tail()}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.popen.wait(timeout=5)
                raise RuntimeError(f"{self.name} exited {self.popen.returncode}; "
                                   f"output: {self.tail()}")
            if match(line):
                return line

    def tail(self, n: int = 12) -> str:
        return " | ".join(self.lines[-n:]) or "(none)"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        stop_tree(self.pid, sig=sig, grace=grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)
        return self.popen.returncode


def stop_all() -> list[str]:
    """Stop every child still running (after the orderly teardown, only a bug leaves any);
    the names of those that were."""
    left = [p for p in _STARTED if p.alive()]
    for p in reversed(left):
        p.stop(grace=5.0)
    _STARTED.clear()
    return [p.name for p in left]


def stop_tree(pid: int, *, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal ``pid`` and every descendant, SIGKILL whatever is left after ``grace`` seconds."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def wait_port(host: str, port: int, timeout: float, probe: bytes = b"P",
              expect: bytes = b"p") -> None:
    """Wait until ``host:port`` answers the workload server's ping (through any tunnel)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(probe)
                if s.recv(1) == expect:
                    return
                last = "connection closed without a reply"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not answer within {timeout:.0f}s ({last})")


def wait_port_open(host: str, port: int, timeout: float, owner: Proc) -> None:
    """Wait until ``host:port`` accepts a TCP connection; fail early if ``owner`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not owner.alive():
            raise RuntimeError(f"{owner.name} exited {owner.popen.returncode}; "
                               f"output: {owner.tail()}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{owner.name} did not listen on {host}:{port} within {timeout:.0f}s")


def cpu_seconds(processes: Mapping[str, tuple[int, bool]]) -> float:
    """User + system CPU seconds used so far by the processes (each with its descendants when
    flagged); gone processes count as zero."""
    total = 0.0
    for pid, with_children in processes.values():
        try:
            root = psutil.Process(pid)
            members = [root, *(root.children(recursive=True) if with_children else [])]
        except psutil.Error:
            continue
        for p in members:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


class RssSampler:
    """Peak resident memory of some processes (each optionally with its descendants, summed)."""

    def __init__(self, procs: Mapping[str, tuple[int, bool]], interval: float = 0.02) -> None:
        self._procs = dict(procs)
        self._interval = interval
        self.peak: dict[str, int] = dict.fromkeys(self._procs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _sample(self) -> None:
        for role, (pid, with_children) in self._procs.items():
            try:
                root = psutil.Process(pid)
                members = [root, *(root.children(recursive=True) if with_children else [])]
                total = 0
                for p in members:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            except psutil.Error:
                continue
            self.peak[role] = max(self.peak[role], total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


@contextlib.contextmanager
def running(proc: Proc, sig: int = signal.SIGTERM) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop(sig)


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    return env
