"""The signal watcher: each SIGINT, SIGTERM or SIGHUP becomes the lifecycle table's action for
the phase the session is in (see lifecycle.py). `Control` is what it shares with the session's
body: the phase, the command, the request to end."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

import anyio

from bridge.local.runner import Child
from bridge.model import lifecycle
from bridge.model.lifecycle import Action, Phase
from bridge.progress import Progress

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Control:
    """What the body and the signal watcher share: the phase, the command, the request to end."""

    phase: Phase = Phase.SETUP
    child: Child | None = None
    end: anyio.Event = field(default_factory=anyio.Event)
    ended_by: int | None = None  # the signal that ended the session
    stopped_now: bool = False  # a second Ctrl-C killed the command
    sigints: int = 0

    def enter(self, phase: Phase) -> None:
        """Move to `phase`, checked against the lifecycle's NEXT table (the one place)."""
        self.phase = lifecycle.enter(self.phase, phase)

    def child_running(self) -> bool:
        return self.child is not None and self.child.returncode is None


async def watch_signals(control: Control, setup: anyio.CancelScope, progress: Progress, *,
                        task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Turn each signal into the table's action for the current phase."""
    with anyio.open_signal_receiver(*SIGNALS) as receiver:
        task_status.started()
        async for sig in receiver:
            event = lifecycle.event_of(sig, control.sigints)
            control.sigints += sig == signal.SIGINT
            act = lifecycle.action(control.phase, event)
            name = signal.Signals(sig).name
            if act is Action.END:
                progress.info(f"{name}: ending the session")
                control.ended_by = sig
                setup.cancel()
            elif act is Action.HAND_BACK:
                progress.info(f"{name}: ending the session")
                control.ended_by = sig
                control.end.set()
            elif act is Action.STOP_NOW and control.child_running():
                assert control.child is not None
                progress.warn(f"{name}: stopping the command now")
                control.stopped_now = True
                control.child.kill_tree()
            elif act is Action.PASS and control.child is not None:
                progress.info(f"{name}: passing it to the command")
                control.child.send_signal(sig)
            elif act in (Action.WAIT, Action.STOP_NOW):  # STOP_NOW: no command (left) to stop
                doing = ("handing traffic back" if control.phase is Phase.HAND_BACK
                         else "restoring the cluster")
                progress.warn(f"{name}: already {doing}, please wait (if bridge is killed, "
                              "run `bridge restore` to finish)")
