"""Progress output: stderr by verbosity, every line to --log-file, and never an exception."""

from __future__ import annotations

import io
from pathlib import Path

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
