"""The WAN section's profile of one swap (tests/equipment/bench/wan.py): time and API requests
per phase, read from the stamped `profile:` lines bridge's log file gets."""

from __future__ import annotations

import datetime as dt

from tests.equipment.bench import wan

LOG = """\
2026-12-07T23:00:01.10Z profile: connect done; 0 API requests so far
2026-12-07T23:00:01.50Z swapping deployment/bench (container web, ports 8080) in namespace x
2026-12-07T23:00:02.00Z profile: resolve+lease done; 7 API requests so far
2026-12-07T23:00:04.25Z profile: link done; 12 API requests so far
2026-12-07T23:00:04.75Z profile: hand-over done; 20 API requests so far
"""


def test_each_phase_gets_its_time_and_its_requests() -> None:
    started = dt.datetime(2026, 12, 7, 23, 0, 0, tzinfo=dt.UTC).timestamp()
    rows = wan.profile(LOG, started)
    assert [(phase, round(secs, 2), n, s) for phase, secs, n, s in rows] == [
        ("connect", 1.1, 0, None), ("resolve+lease", 0.9, 7, None), ("link", 2.25, 5, None),
        ("hand-over", 0.5, 8, None)]
    assert wan.profile_line(rows).startswith("profile: connect 1.10s/0 req, resolve+lease 0.90s/7")


def test_a_log_without_profile_lines_says_so() -> None:
    assert wan.profile("2026-12-07T23:00:01.10Z swapping\n", 0.0) == []
    assert "no profile" in wan.profile_line([])


def test_the_serial_round_trips_of_each_phase_when_bridge_says_them() -> None:
    """A bridge that counts its serial round trips (`(N serial)`): each phase gets its own."""
    log = ("2026-12-07T23:00:01.00Z profile: connect done; 0 API requests so far (0 serial)\n"
           "2026-12-07T23:00:01.40Z profile: resolve done; 4 API requests so far (1 serial)\n"
           "2026-12-07T23:00:02.00Z profile: lease done; 7 API requests so far (2 serial)\n")
    started = dt.datetime(2026, 12, 7, 23, 0, 0, tzinfo=dt.UTC).timestamp()
    rows = wan.profile(log, started)
    assert [(phase, n, s) for phase, _, n, s in rows] == [
        ("connect", 0, 0), ("resolve", 4, 1), ("lease", 3, 1)]
    assert "resolve 0.40s/4 req/1 serial" in wan.profile_line(rows)
