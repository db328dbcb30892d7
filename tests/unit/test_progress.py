"""Progress output: stderr by verbosity, every line to --log-file, and never an exception."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bridge.progress import QUIET, Progress


def test_log_file_gets_every_line_whatever_the_verbosity(tmp_path: Path) -> None:
    log, err = tmp_path / "bridge.log", io.StringIO()
    p = Progress(QUIET, str(log), stream=err)
    p.info("scaled deployment/hello to 0")
    p.close()
    assert err.getvalue() == ""
    assert log.read_text().rstrip().endswith("scaled deployment/hello to 0")


def test_a_failing_log_file_does_not_raise(tmp_path: Path) -> None:
    """Progress is written during the restore: a full disk must not cut it short."""

    class Full(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    err = io.StringIO()
    p = Progress(stream=err)
    p.log = Full()
    p.info("restoring deployment/hello")
    assert "restoring deployment/hello" in err.getvalue()


@pytest.mark.parametrize("verbosity,shown", [(0, ["warning"]), (1, ["info", "warning"]),
                                             (2, ["info", "detail", "warning"])])
def test_progress_levels(verbosity: int, shown: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    log = tmp_path / "log"
    p = Progress(verbosity, str(log), stream=out)
    p.info("info")
    p.detail("detail")
    p.warn("warning")
    p.close()
    assert [ln.split(": ")[-1] for ln in out.getvalue().splitlines()] == shown
    assert len(log.read_text().splitlines()) == 3  # the log file gets everything
