"""What a signal or the command's exit does, in each phase of a swap: a pure table.

    SETUP      resolve, plan, lease, link: nothing of the laptop gets traffic yet
    HAND_OVER  the command starts, the proxy turns Ready, the original scales to zero
    HOLD       the laptop gets the traffic
    HAND_BACK  the original scales up and is Ready, the proxy leaves the endpoints
    STOPPING   the command was signalled (traffic is back) and is given a grace to end
    RESTORE    the cleanup stack runs (proxy deleted, lock cleared)

No I/O here: `action(phase, event)` is looked up by the session's signal watcher and by the
session body when the command exits, and tested as the table it is. `NEXT` says which phase may
follow which; `enter` is the one place a phase change is checked (signals.Control.enter).
"""

from __future__ import annotations

import enum
import signal


class Phase(enum.Enum):
    SETUP = "setup"
    HAND_OVER = "hand-over"
    HOLD = "hold"
    HAND_BACK = "hand-back"
    STOPPING = "stopping"
    RESTORE = "restore"


class Event(enum.Enum):
    INT = "SIGINT"  # the first Ctrl-C
    INT_AGAIN = "SIGINT again"  # any later Ctrl-C
    TERM = "SIGTERM"
    HUP = "SIGHUP"
    CHILD_EXIT = "command exited"


class Action(enum.Enum):
    END = "end"  # cancel the setup; the cleanup stack restores
    HAND_BACK = "hand back"  # traffic back to the cluster first, then signal the command
    STOP_NOW = "stop now"  # stop the command's tree at once (the hand-back goes on)
    PASS = "pass"  # pass the signal on to the command
    WAIT = "wait"  # acknowledge, do not obey: a restore must not be cut short
    WITHDRAW = "withdraw"  # the command is gone: proxy not Ready at once, then restore
    KEEP_ORIGINAL = "keep original"  # gone during the hand-over: the original keeps serving
    NOTHING = "nothing"


_SIGNALS = (Event.INT, Event.INT_AGAIN, Event.TERM, Event.HUP)


def _row(int_: Action, int_again: Action, term: Action, hup: Action,
         child_exit: Action) -> dict[Event, Action]:
    return {Event.INT: int_, Event.INT_AGAIN: int_again, Event.TERM: term, Event.HUP: hup,
            Event.CHILD_EXIT: child_exit}


A = Action
TABLE: dict[Phase, dict[Event, Action]] = {
    #                       INT          INT again    TERM         HUP          command exit
    Phase.SETUP: _row(A.END, A.END, A.END, A.END, A.END),
    Phase.HAND_OVER: _row(A.HAND_BACK, A.STOP_NOW, A.HAND_BACK, A.HAND_BACK, A.KEEP_ORIGINAL),
    Phase.HOLD: _row(A.HAND_BACK, A.STOP_NOW, A.HAND_BACK, A.HAND_BACK, A.WITHDRAW),
    Phase.HAND_BACK: _row(A.STOP_NOW, A.STOP_NOW, A.WAIT, A.WAIT, A.NOTHING),
    Phase.STOPPING: _row(A.STOP_NOW, A.STOP_NOW, A.PASS, A.PASS, A.NOTHING),
    Phase.RESTORE: _row(A.WAIT, A.WAIT, A.WAIT, A.WAIT, A.NOTHING),
}


# Which phase may follow which: the setup may fail (RESTORE) or hand over; a session ending
# during the hand-over hands back without holding; a command gone during the hand-over or the
# hold goes straight to the restore (after a withdraw); the attach end has no STOPPING.
NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.SETUP: frozenset({Phase.HAND_OVER, Phase.RESTORE}),
    Phase.HAND_OVER: frozenset({Phase.HOLD, Phase.HAND_BACK, Phase.RESTORE}),
    Phase.HOLD: frozenset({Phase.HAND_BACK, Phase.RESTORE}),
    Phase.HAND_BACK: frozenset({Phase.STOPPING, Phase.RESTORE}),
    Phase.STOPPING: frozenset({Phase.RESTORE}),
    Phase.RESTORE: frozenset(),
}
assert set(NEXT) == set(TABLE) == set(Phase)


class PhaseError(AssertionError):
    """A phase change the table does not allow: a bug in the session, not a user error."""


def enter(current: Phase, new: Phase) -> Phase:
    """`new`, when NEXT allows it after `current`; else PhaseError."""
    if new not in NEXT[current]:
        raise PhaseError(f"phase {new.value} cannot follow {current.value}")
    return new


def action(phase: Phase, event: Event) -> Action:
    return TABLE[phase][event]


def event_of(sig: int, sigints_before: int) -> Event:
    """The event a signal is, given how many SIGINTs came before it."""
    if sig == signal.SIGINT:
        return Event.INT if sigints_before == 0 else Event.INT_AGAIN
    if sig == signal.SIGTERM:
        return Event.TERM
    if sig == signal.SIGHUP:
        return Event.HUP
    raise ValueError(f"not a session signal: {sig}")


HAND_BACK_LINE = ("handing traffic back to the cluster; your command stops once it has; "
                  "Ctrl-C again to stop it now")
