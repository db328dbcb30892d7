"""HTTP load with ``wrk`` (Debian package): requests/s, keep-alive or a connection each."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    requests: int
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx/3xx replies


def available() -> str | None:
    """The path of wrk, or None."""
    return shutil.which("wrk")


def parse(output: str) -> WrkResult:
    """Read wrk's summary (``Requests/sec:``, ``N requests in``, ``Socket errors:``...)."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output: {output.strip()[:200]!r}")
    errors = 0
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return WrkResult(float(rps.group(1)), int(total.group(1)), errors)


def run(host: str, port: int, *, seconds: float, connections: int, new_connection: bool,
        threads: int = 1) -> WrkResult:
    """Run wrk against ``http://host:port/`` for ``seconds`` (bounded by a hard timeout)."""
    exe = available()
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian package wrk; scripts/bootstrap has it)")
    cmd = [exe, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", "5s"]
    if new_connection:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://{host}:{port}/")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"wrk exited {out.returncode}: {out.stderr.strip()[:200]}")
    return parse(out.stdout)
