"""Only bridge speaks on the user's terminal (issue 18): a whole `bridge swap` in command mode,
with real traffic through the Service, writes nothing on stderr that is not bridge's own, and
the sidecar's log carries only the sidecar's lines.

Run with the newest dependencies too (`make test-latest`): that is where a dependency's new
warning shows first (asyncssh 2.24 under cryptography 51 printed 10 lines of
CryptographyDeprecationWarning at the top of every swap, and as many in the sidecar's log).
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Any

import pytest

from bridge.model import state
from sidecar import protocol

from .support import LOCAL_SERVER, free_port, http_get, until_laptop_answers

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

# Every line bridge writes on stderr: its progress (bridge/progress.py writes "bridge: TEXT",
# warnings and errors as "bridge: warning: ..." / "bridge: error: ...").
BRIDGE_LINE = re.compile(r"bridge: \S")
# The sidecar's log: the host key on stdout, then its logging format (sidecar/__main__.py).
SIDECAR_LINE = re.compile(re.escape(protocol.HOST_KEY_LOG_PREFIX) +
                          r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} sidecar: ")


def not_ours(text: str, ours: re.Pattern[str]) -> list[str]:
    return [line for line in text.splitlines() if not ours.match(line)]


LAPTOP_VERBOSITY = pytest.mark.only_on("local", why="-v changes only bridge's own lines; the "
                                                    "sidecar's log (the image users run) is "
                                                    "checked on both clusters without it")


@pytest.mark.parametrize("verbosity", [[], pytest.param(["-v"], marks=LAPTOP_VERBOSITY)],
                         ids=["normal", "verbose"])
def test_a_whole_swap_writes_only_bridges_lines(make_workload: Any,
                                                verbosity: list[str]) -> None:
    w = make_workload()
    port = free_port()
    ip = w.service_ip()
    # a script file: bridge repeats the command in its progress lines, and LOCAL_SERVER given
    # with -c would put its own lines (of bridge's output) on stderr
    server = w.tmp / "server.py"
    server.write_text(LOCAL_SERVER)
    b = w.bridge("swap", "hello", *verbosity, "--port", f"http:{port}", "--",
                 sys.executable, str(server), str(port))
    b.wait_for("swapped: ")
    until_laptop_answers(ip, 80, f"laptop {port}\n")
    # some concurrent traffic through the tunnel, then the child ends the session
    bodies: list[str] = []
    threads = [threading.Thread(target=lambda: bodies.append(http_get(ip, 80)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert bodies == [f"laptop {port}\n"] * 8
    proxy_pods = w.k("get", "pods", "-l", state.SESSION_LABEL, "-o", "name").split()
    assert len(proxy_pods) == 1
    sidecar_log = w.k("logs", proxy_pods[0])
    assert http_get(ip, 80, "/exit/0") == f"laptop {port}\n"
    assert b.wait() == 0, b.stderr
    assert "deployment/hello restored" in b.stderr
    assert not_ours(b.stderr, BRIDGE_LINE) == [], b.stderr
    assert b.stdout == "local server up\n"  # the child's stdout, nothing of bridge's
    assert protocol.HOST_KEY_LOG_PREFIX in sidecar_log
    assert not_ours(sidecar_log, SIDECAR_LINE) == [], sidecar_log
