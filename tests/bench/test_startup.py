"""The benchmark's start-up section: the commands run and are timed; the table's ratios are
to `python3 -c pass` and kubectl from the same run. Never how fast anything is."""

from __future__ import annotations

import pytest

from tests.equipment.bench import startup


def test_every_command_runs_and_is_timed() -> None:
    timings = startup.measure(startup.commands(), rounds=1)
    by_label = {t.label: t for t in timings}
    assert startup.BASELINE in by_label
    assert sum(t.bridge for t in timings) == 3  # --help, --version, completion
    for t in timings:
        if t.label.startswith("kubectl") and t.error:
            continue  # no kubectl on this machine: said in the table, not a failure here
        assert t.error == "" and len(t.rounds) == 1 and t.rounds[0] > 0, t


def test_text_gives_ratios_to_python_and_kubectl() -> None:
    timings = [startup.Timing(startup.BASELINE, False, [0.02, 0.02, 0.02]),
               startup.Timing("kubectl version --client", False, [0.05]),
               startup.Timing("bridge --help", True, [0.1]),
               startup.Timing("bridge --version", True, [0.3]),
               startup.Timing("bridge completion", True, error="exit 1: boom")]
    rows = {ln.split("  ")[1].strip(): ln for ln in startup.text(timings).splitlines()[2:]}
    assert rows["bridge --help"].split()[-4:] == ["0.100", "5.00x", "2.00x", "met"]
    assert rows["bridge --version"].split()[-1] == "MISSED"
    assert "not measured: exit 1: boom" in rows["bridge completion"]
    assert startup.to_json(timings)["commands"][4]["median"] is None
    assert startup.to_json(timings)["commands"][2]["median"] == pytest.approx(0.1)
