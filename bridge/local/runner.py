"""The child: the developer's command, run with the pod's environment.

Why the child gets a session of its own (``start_new_session=True``): a terminal
sends Ctrl-C (SIGINT), SIGHUP and friends to its whole foreground process group.
If the child shared bridge's group, a Ctrl-C would hit both at the same moment and
the child could die before bridge has decided anything. In its own session only
bridge receives terminal signals; bridge forwards them (`send_signal`, to the
child's whole process group, as a terminal would) and then restores the cluster
when the child exits. A process outside the terminal's session can still read
and write the terminal it inherited (a debugger prompt works); it only loses job
control (Ctrl-Z), which bridge does not offer.

The session also marks the child's tree: `terminate_tree` finds every process
descended from the child, and those that were orphaned (re-parented away) but
still carry the child's session id, SIGTERMs them, and SIGKILLs what is left
after a bounded grace period.

The command never outlives bridge: the child gets PR_SET_PDEATHSIG (SIGKILL when bridge dies,
even by SIGKILL), and a watcher process (`bridge.local.reaper`, in a session of its own) stops the
rest of the tree when its pipe from bridge closes without a word (see reaper.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import psutil

from bridge.errors import BridgeError
from bridge.local import reaper

_POLL = 0.05  # seconds between checks while waiting for processes to go
_KILL_WAIT = 5.0  # bound on waiting for SIGKILLed processes to disappear
_CLOCK_MARGIN = 2.0  # seconds; see Child.__init__
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec function: SIGKILL this process when `parent` dies (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def start_reaper(pid: int, since: float) -> subprocess.Popen[bytes] | None:
    """The watcher that stops `pid`'s tree if bridge dies (see reaper.py); None if it cannot
    start (the command still dies with bridge through PR_SET_PDEATHSIG)."""
    if os.environ.get("BRIDGE_TEST_NO_REAPER"):  # tests: show what the watcher adds
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge.local.reaper", str(pid), repr(since)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
    except OSError:
        return None


def exit_status(returncode: int) -> int:
    """Exit status as a shell reports it: the code, or 128+N if signal N killed the process."""
    return 128 - returncode if returncode < 0 else returncode


class Child:
    """A started command. Use `Child.start`."""

    def __init__(self, process: asyncio.subprocess.Process, argv: Sequence[str],
                 started: float) -> None:
        self._process = process
        self.argv = list(argv)
        self.pid: int = process.pid
        # Processes of the child's session are ours only if created after it started (a
        # process from before with the same session id would be one of a recycled pid). The
        # bound is the wall clock before the spawn, less a margin: psutil's create_time counts
        # from /proc/stat's boot time in whole seconds, so it can read up to 1 s early. (Asking
        # psutil for the child's own create_time fails when a quick child is already gone, and
        # "now" would then be later than the orphans it left.)
        self._created = started - _CLOCK_MARGIN
        self._reaper = start_reaper(self.pid, self._created)

    @property
    def created(self) -> float:
        """A wall-clock bound before the child was created (processes created at or after it
        may be the child's)."""
        return self._created

    @classmethod
    async def start(cls, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start `argv` with exactly `env`, stdio inherited, in a new session."""
        if not argv:
            raise BridgeError("no command given to run")
        started = time.time()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, env=dict(env), start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except FileNotFoundError:
            raise BridgeError(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise BridgeError(f"command is not executable: {argv[0]}") from None
        except OSError as exc:
            raise BridgeError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        return cls(process, argv, started)

    @property
    def returncode(self) -> int | None:
        """None while running, else the exit status as `wait` returns it."""
        code = self._process.returncode
        return None if code is None else exit_status(code)

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the child's process group (what a terminal would do); no-op once gone."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            # The group is empty (or its leader's pid was reused): fall back to the child itself.
            if self._process.returncode is None:
                try:
                    self._process.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def wait(self) -> int:
        """Wait for the child to exit; its code, or 128+N if signal N killed it."""
        return exit_status(await self._process.wait())

    async def terminate_tree(self, grace: float = 5.0) -> None:
        """SIGTERM the child and every process of its tree, SIGKILL what is left after `grace`;
        then the watcher is told that bridge took care of it."""
        procs = self._tree()
        self._signal_all(procs, signal.SIGTERM)
        if not await self._wait_gone(procs, grace):
            # Processes may have forked meanwhile: look again before killing.
            procs = self._tree()
            self._signal_all(procs, signal.SIGKILL)
            await self._wait_gone(procs, _KILL_WAIT)
        self.release_reaper()

    def kill_tree(self) -> None:
        """SIGKILL the child and every process of its tree, now (a second Ctrl-C)."""
        self._signal_all(self._tree(), signal.SIGKILL)

    def release_reaper(self) -> None:
        """Tell the watcher bridge ends normally (it exits without touching anything)."""
        reaper, self._reaper = self._reaper, None
        if reaper is None or reaper.stdin is None:
            return
        try:
            reaper.stdin.write(b"done")
            reaper.stdin.close()
        except OSError:
            pass
        try:
            reaper.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass

    def _tree(self) -> list[psutil.Process]:
        """The child (if running), its descendants, and orphans still in its session."""
        found: dict[int, psutil.Process] = {}
        if self._process.returncode is None:
            try:
                root = psutil.Process(self.pid)
                found[root.pid] = root
                for proc in root.children(recursive=True):
                    found[proc.pid] = proc
            except psutil.Error:
                pass
        for proc in reaper.tree(self.pid, self._created):  # orphans left in its session
            found.setdefault(proc.pid, proc)
        return list(found.values())

    def _signal_all(self, procs: list[psutil.Process], sig: int) -> None:
        for proc in procs:
            if proc.pid == self.pid:
                if self._process.returncode is None:
                    try:
                        self._process.send_signal(sig)
                    except ProcessLookupError:
                        pass
                continue
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass

    async def _wait_gone(self, procs: list[psutil.Process], bound: float) -> bool:
        """Wait up to `bound` s until none of `procs` runs (zombies count as gone)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        while True:
            alive = [proc for proc in procs if self._alive(proc)]
            if not alive:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL)

    def _alive(self, proc: psutil.Process) -> bool:
        if proc.pid == self.pid:
            # Our own child: asyncio reaps it; never let psutil wait on it.
            return self._process.returncode is None
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
