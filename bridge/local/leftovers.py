"""What dead sessions left on this machine. Processes: the command (or part of its tree) of
session S carries K8S_BRIDGE_SESSION=S in its environment (see envout.py); `bridge restore`
reports them, with the ports they still hold, since the next swap's command could not listen
there. Files: the pod's files a killed bridge copied or mounted (`remove_files`, the janitor
every repair runs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import psutil

from bridge.local.envout import SESSION_VAR


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str
    listening: tuple[int, ...]  # local TCP ports it listens on

    def describe(self) -> str:
        ports = ", ".join(f"127.0.0.1:{p}" for p in self.listening)
        held = f", listening on {ports}" if ports else ""
        return f"pid {self.pid} ({self.command}){held}"


def find(session: str) -> list[Leftover]:
    """Processes of this user whose environment names `session` (others cannot be read)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(SESSION_VAR) != session:
                continue
            listening = sorted({c.laddr.port for c in proc.net_connections(kind="tcp")
                                if c.status == psutil.CONN_LISTEN})
            cmd = " ".join(proc.cmdline())[:80] or proc.name()
            found.append(Leftover(proc.pid, cmd, tuple(listening)))
        except (psutil.Error, OSError):
            continue
    return found


async def remove_files(say: Callable[[str], None]) -> None:
    """Files (issue 15): unmount and remove the pod's files killed bridges left on this
    machine (sessions still running are left alone), off the event loop."""
    from bridge.local import mounts  # only when a repair runs (the CLI starts faster)

    await anyio.to_thread.run_sync(mounts.cleanup_leftovers, say)
