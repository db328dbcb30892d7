"""The laptop end of a swap, chosen once from the request: `CommandEnd` (bridge starts the
command, hands the traffic over once it listens, passes signals on, ends with its exit code)
or `AttachEnd` (no command: the environment goes to a file, bridge holds the swap until Ctrl-C
and the developer starts the service, e.g. under a debugger).

The session calls the same methods in the same order on either:

    check_ports      before anything changes: who already listens on the local ports
    file_env         bridge's variables the env file gets beyond the pod's (attach: outbound)
    env_written      after the env file was written (attach: how to start with it)
    start            the hand-over begins (command: started; attach: squatters re-checked)
    foreign          (any time, from the tunnel) a forwarded connection reached another
                     user's listener and was closed before a byte was sent: hold ends
    listening        until the traffic may go to the laptop: the address for each port, or
                     None when the session is ending
    gone             the command exited (never, in attach mode)
    hold             the laptop gets the traffic; returns when the session should end
    exit_code        the command's exit code once gone
    finish           after the hand-back: the exit code bridge ends with
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio

from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError, NothingChanged
from bridge.local import envout
from bridge.local import ports as localports
from bridge.local.ide import envfile as ide_envfile
from bridge.local.runner import Child
from bridge.local.signals import Control
from bridge.model import state
from bridge.model.lifecycle import Phase
from bridge.progress import Progress
from bridge.swap.handover import wait_listening
from bridge.swap.request import SwapRequest
from bridge.transport import outbound as outbound_mod

# How often the local ports are checked for another user's listener. What protects the
# traffic is the check of every forwarded connection (bridge.transport.tunnel.open_local), not
# this poll: it ends the session sooner, before a request has come. Off Linux neither can tell
# owners: both do nothing there (bridge.local.ports.inspectable).
SQUAT_CHECK = 1.0
CHILD_GRACE = 5.0  # SIGTERM -> SIGKILL when the cleanup stops the command's tree
END_GRACE = CHILD_GRACE  # after the command was signalled, how long it may take to end

OnCommand = Callable[[list[str], dict[str, str]], Awaitable[tuple[list[str], dict[str, str]]]]


class Swapped(Protocol):
    """What an end reads of the session's state (bridge.swap.session.Swap)."""

    pod_env: dict[str, str]
    own_env: dict[str, str]
    env_file: str | None

    @property
    def session_id(self) -> str: ...

    @property
    def local_ports(self) -> list[int]: ...


class End(Protocol):
    attach: bool

    def check_ports(self, ports: Sequence[int]) -> None: ...
    def foreign(self, line: str) -> None: ...
    def file_env(self, ob: outbound_mod.Outbound, pod_env: dict[str, str]) -> dict[str, str]: ...
    def env_written(self, ob: outbound_mod.Outbound, env_file: str | None) -> None: ...
    async def start(self, swap: Swapped) -> None: ...
    async def listening(self, swap: Swapped, stop: Callable[[], bool]) -> dict[int, str] | None:
        ...
    def gone(self) -> bool: ...
    async def hold(self, swap: Swapped) -> None: ...
    def exit_code(self) -> int: ...
    async def finish(self) -> int: ...


def check_before_swap(ports: Sequence[int], progress: Progress, *, command: bool) -> None:
    refusal, note = localports.check_before_swap(ports, command=command)
    if refusal:
        raise NothingChanged(f"{refusal}; nothing was changed")
    if note:  # attach mode: most often the service the developer started for this session
        progress.info(note)


def refuse_squatters(ports: Sequence[int]) -> None:
    """No other user of this machine may listen on a local port the cluster's requests go to
    (bridge.local.ports); BridgeError ends the session."""
    why = localports.problem(list(ports))
    if why:
        raise BridgeError(why)


class Squatted:
    """What the tunnel found while the session lasts: another user's listener took a forwarded
    connection (closed before a byte was sent). `found` keeps the first line; `wait` raises it
    as the BridgeError that ends the session, as the poll's refusal does."""

    def __init__(self) -> None:
        self.line = ""
        self._found = anyio.Event()

    def found(self, line: str) -> None:
        if not self.line:
            self.line = line
            self._found.set()

    async def wait(self) -> None:
        await self._found.wait()
        raise BridgeError(self.line)


async def first_of(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Return as soon as one of `waits` returns."""
    async with anyio.create_task_group() as tg:
        async def one(w: Callable[[], Awaitable[Any]]) -> None:
            await w()
            tg.cancel_scope.cancel()

        for w in waits:
            tg.start_soon(one, w)



def shown_command(argv: Sequence[str]) -> str:
    """A command as one line of bridge's output: quoted as a shell would take it back, with
    newlines and other control characters escaped (a multi-line `python -c` must not print
    lines that are not bridge's)."""
    return state.printable(shlex.join(argv), limit=2000)

class AttachEnd:
    """No command: the developer starts the service on 127.0.0.1:PORT with the env file."""

    attach = True

    def __init__(self, request: SwapRequest, control: Control, progress: Progress) -> None:
        self.request, self.control, self.progress = request, control, progress
        self.squatted = Squatted()

    def check_ports(self, ports: Sequence[int]) -> None:
        check_before_swap(ports, self.progress, command=False)

    def foreign(self, line: str) -> None:
        self.squatted.found(line)

    def file_env(self, ob: outbound_mod.Outbound, pod_env: dict[str, str]) -> dict[str, str]:
        # outbound's own variables join after the pod's are filtered
        return {**ob.forward_env(pod_env), **ob.attach_env()}

    def env_written(self, ob: outbound_mod.Outbound, env_file: str | None) -> None:
        hint = env_file and ob.attach_hint(env_file, self.request.options.env_syntax)
        if hint:
            self.progress.info(hint)

    async def start(self, swap: Swapped) -> None:
        refuse_squatters(swap.local_ports)  # before any request comes this way

    async def listening(self, swap: Swapped, stop: Callable[[], bool]) -> dict[int, str] | None:
        return {}  # the developer's service starts later, on 127.0.0.1

    def gone(self) -> bool:
        return False

    async def hold(self, swap: Swapped) -> None:
        self.progress.info(ide_envfile.attached_message(  # the line IDE tasks wait for
            [f"127.0.0.1:{port}" for port in swap.local_ports], swap.env_file))

        async def watch_squatters() -> None:
            while True:
                await anyio.sleep(SQUAT_CHECK)
                refuse_squatters(swap.local_ports)

        await first_of(self.control.end.wait, watch_squatters, self.squatted.wait)

    def exit_code(self) -> int:
        raise AssertionError("attach mode has no command")

    async def finish(self) -> int:
        return 0


class CommandEnd:
    """The command bridge starts with the pod's environment; its exit code is bridge's."""

    attach = False

    def __init__(self, request: SwapRequest, control: Control, progress: Progress,
                 stack: CleanupStack, on_command: list[OnCommand]) -> None:
        self.request, self.control, self.progress = request, control, progress
        self.stack, self.on_command = stack, on_command
        self.child: Child | None = None
        self.hosts: dict[int, str] = {}  # port -> the address the command listens on
        self.squatted = Squatted()

    def check_ports(self, ports: Sequence[int]) -> None:
        check_before_swap(ports, self.progress, command=True)

    def foreign(self, line: str) -> None:
        self.squatted.found(line)

    def file_env(self, ob: outbound_mod.Outbound, pod_env: dict[str, str]) -> dict[str, str]:
        return {}

    def env_written(self, ob: outbound_mod.Outbound, env_file: str | None) -> None:
        return None

    async def start(self, swap: Swapped) -> None:
        o = self.request.options
        env = envout.child_environment(swap.pod_env, swap.session_id, allow=o.env_allow,
                                       own=swap.own_env)
        argv = list(self.request.command)
        for hook in self.on_command:
            argv, env = await hook(argv, env)
        self.control.child = self.child = child = await Child.start(argv, env)

        async def stop() -> None:
            if child.returncode is None:
                self.progress.info(f"stopping the command (pid {child.pid}): SIGTERM, then "
                                   f"SIGKILL after {CHILD_GRACE:g}s")
            await child.terminate_tree(CHILD_GRACE)

        self.stack.push("stopping the command", stop)
        self.progress.info(f"started {shown_command(argv)} (pid {child.pid})")

    async def listening(self, swap: Swapped, stop: Callable[[], bool]) -> dict[int, str] | None:
        child = self._child()
        hosts = await wait_listening(swap.local_ports, self.request.options.timeout,
                                     self.progress, stop,
                                     lambda: localports.command_pids(child.pid, child.created))
        self.hosts = dict(hosts or {})
        return hosts

    def gone(self) -> bool:
        return self.child is not None and self.child.returncode is not None

    async def hold(self, swap: Swapped) -> None:
        self.progress.info(f"swapped: {shown_command(self.request.command)} gets the traffic; "
                           "Ctrl-C ends the swap")

        async def watch_squatters() -> None:  # another user where the command listened
            while True:
                await anyio.sleep(SQUAT_CHECK)
                why = await anyio.to_thread.run_sync(localports.watch_problem, self.hosts)
                if why:
                    raise BridgeError(why)

        await first_of(self.control.end.wait, self._child().wait, watch_squatters,
                       self.squatted.wait)

    def exit_code(self) -> int:
        code = self._child().returncode
        assert code is not None
        return code

    async def finish(self) -> int:
        """After the hand-back: pass the signal that ended the session on, give the command
        END_GRACE to end; its exit code (128+N when it had to be stopped)."""
        c, p, child = self.control, self.progress, self._child()
        c.enter(Phase.STOPPING)
        sig = c.ended_by or signal.SIGTERM
        name = signal.Signals(sig).name
        if child.returncode is None and not c.stopped_now:
            p.info(f"{name}: passing it to the command")
            child.send_signal(sig)
            with anyio.move_on_after(END_GRACE):
                await child.wait()
            if child.returncode is None:
                why = " (the terminal is gone)" if sig == signal.SIGHUP else ""
                p.warn(f"the command still runs {END_GRACE:g}s after {name}{why}; stopping "
                       "it and restoring the cluster")
                return 128 + sig  # the cleanup stack stops its tree
        code = await child.wait()
        if c.stopped_now:
            return 128 + sig
        p.info(f"command exited with code {code}")
        return code

    def _child(self) -> Child:
        assert self.child is not None, "the command has not started"
        return self.child


def choose(request: SwapRequest, control: Control, progress: Progress, stack: CleanupStack,
           on_command: list[OnCommand]) -> End:
    """The end the request asks for, chosen once."""
    if request.attach:
        return AttachEnd(request, control, progress)
    return CommandEnd(request, control, progress, stack, on_command)
