"""The lifecycle table: what each signal, and the command's exit, does in each phase."""

from __future__ import annotations

import signal

import pytest

from bridge.model.lifecycle import TABLE, Action, Event, Phase, action, event_of

A, E, P = Action, Event, Phase

EXPECTED = [
    # phase         event          action: why
    (P.SETUP, E.INT, A.END),  # nothing of the laptop gets traffic yet: just undo
    (P.SETUP, E.TERM, A.END),
    (P.SETUP, E.HUP, A.END),
    (P.SETUP, E.INT_AGAIN, A.END),
    (P.HAND_OVER, E.INT, A.HAND_BACK),  # the proxy may already be Ready: give it back first
    (P.HAND_OVER, E.TERM, A.HAND_BACK),
    (P.HAND_OVER, E.CHILD_EXIT, A.KEEP_ORIGINAL),
    (P.HOLD, E.INT, A.HAND_BACK),  # traffic back to the cluster, then the command stops
    (P.HOLD, E.TERM, A.HAND_BACK),
    (P.HOLD, E.HUP, A.HAND_BACK),
    (P.HOLD, E.CHILD_EXIT, A.WITHDRAW),  # no endpoint that accepts and drops
    (P.HAND_BACK, E.INT, A.STOP_NOW),  # "Ctrl-C again to stop it now"
    (P.HAND_BACK, E.INT_AGAIN, A.STOP_NOW),
    (P.HAND_BACK, E.TERM, A.WAIT),  # the hand-back is what SIGTERM asked for: let it finish
    (P.HAND_BACK, E.HUP, A.WAIT),
    (P.HAND_BACK, E.CHILD_EXIT, A.NOTHING),
    (P.STOPPING, E.INT_AGAIN, A.STOP_NOW),
    (P.STOPPING, E.TERM, A.PASS),
    (P.STOPPING, E.HUP, A.PASS),
    (P.RESTORE, E.INT, A.WAIT),  # a restore is never cut short
    (P.RESTORE, E.INT_AGAIN, A.WAIT),
    (P.RESTORE, E.TERM, A.WAIT),
    (P.RESTORE, E.HUP, A.WAIT),
    (P.RESTORE, E.CHILD_EXIT, A.NOTHING),
]


@pytest.mark.parametrize("phase,event,expected", EXPECTED,
                         ids=[f"{p.value}-{e.value}" for p, e, _ in EXPECTED])
def test_the_table(phase: Phase, event: Event, expected: Action) -> None:
    assert action(phase, event) is expected


def test_every_phase_answers_every_event() -> None:
    for phase in Phase:
        assert set(TABLE[phase]) == set(Event), phase


def test_no_signal_stops_the_command_before_traffic_is_back() -> None:
    """Once the laptop may get traffic (hand-over, hold), the only way a first signal ends the
    session is the hand-back; stopping at once takes a second Ctrl-C."""
    for phase in (P.HAND_OVER, P.HOLD):
        for event in (E.INT, E.TERM, E.HUP):
            assert action(phase, event) is A.HAND_BACK


def test_signals_become_events() -> None:
    assert event_of(signal.SIGINT, 0) is E.INT
    assert event_of(signal.SIGINT, 1) is E.INT_AGAIN
    assert event_of(signal.SIGTERM, 3) is E.TERM
    assert event_of(signal.SIGHUP, 0) is E.HUP
    with pytest.raises(ValueError):
        event_of(signal.SIGUSR1, 0)


def test_phase_changes_follow_the_next_table() -> None:
    """The session's paths: a failed setup, a whole command session, an attach session, a
    command gone during the hand-over or the hold, a session ended during the hand-over."""
    from bridge.model.lifecycle import NEXT, PhaseError, enter

    paths = [
        [P.SETUP, P.RESTORE],
        [P.SETUP, P.HAND_OVER, P.HOLD, P.HAND_BACK, P.STOPPING, P.RESTORE],
        [P.SETUP, P.HAND_OVER, P.HOLD, P.HAND_BACK, P.RESTORE],
        [P.SETUP, P.HAND_OVER, P.RESTORE],
        [P.SETUP, P.HAND_OVER, P.HOLD, P.RESTORE],
        [P.SETUP, P.HAND_OVER, P.HAND_BACK, P.STOPPING, P.RESTORE],
    ]
    for path in paths:
        for current, new in zip(path, path[1:], strict=False):
            assert enter(current, new) is new
    for current, new in [(P.HOLD, P.HAND_OVER), (P.SETUP, P.HOLD), (P.RESTORE, P.SETUP),
                         (P.RESTORE, P.RESTORE), (P.STOPPING, P.HOLD), (P.SETUP, P.STOPPING)]:
        with pytest.raises(PhaseError):
            enter(current, new)
    assert set(NEXT) == set(TABLE) == set(P)


def test_the_control_enters_phases_through_the_table() -> None:
    from bridge.local.signals import Control
    from bridge.model.lifecycle import PhaseError

    c = Control()
    c.enter(P.HAND_OVER)
    c.enter(P.HOLD)
    with pytest.raises(PhaseError):
        c.enter(P.HAND_OVER)
    assert c.phase is P.HOLD
