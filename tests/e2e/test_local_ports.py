"""The laptop's end of a swap, end to end on the cluster with real traffic through the Service:
the cluster's requests reach the developer's command and nobody else (issue 21 items 2 and 3,
issue 19 item 6), and what can be found out before the swap is refused before anything
changes.

These do not depend on which cluster runs them (they are about the laptop's sockets and the
request's checks): they run on the local test cluster only, on purpose.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

from tests.helpers import http_server

from .support import free_port, http_get, until_laptop_answers, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e,
              pytest.mark.only_on("local", why="the laptop's sockets and the request's checks "
                                               "before any change: nothing there depends on which "
                                               "cluster serves")]


def untouched(w: Any) -> tuple[str, int]:
    """What a change to the namespace would move: the original's resourceVersion and
    replicas; and nothing of bridge's there."""
    dep = w.get("deployment", w.name)
    assert w.proxies() == [] and w.our_annotations() == {}
    return str(dep["metadata"]["resourceVersion"]), int(dep["spec"]["replicas"])


def test_a_stray_server_on_the_port_refuses_the_swap_before_any_change(make_workload: Any) -> None:
    """Issue 21.2: with a forgotten `python3 -m http.server PORT` running and a command that
    does not bind, the in-cluster client got the stray server's directory listing while bridge
    said the command got the traffic. Now: refused, naming the process, nothing changed."""
    w = make_workload()
    port = free_port()
    stray = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                              "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w.children.append(stray)
    wait_until("the stray server to listen",
               lambda: http_get("127.0.0.1", port).startswith("<!DOCTYPE"))
    before = untouched(w)
    code, b = w.run_bridge("swap", "hello", "--port", f"http:{port}", "--outbound", "none",
                           "--", "sleep", "30")
    assert code != 0
    said = [ln for ln in b.stderr.splitlines() if "error" in ln]
    assert len(said) == 1, b.stderr
    assert f"127.0.0.1:{port} (pid {stray.pid}, python" in said[0], said[0]
    assert said[0].endswith("nothing was changed")
    assert "created proxy" not in b.stderr and "swapping" not in b.stderr
    assert untouched(w) == before
    assert http_get(w.service_ip(), 80).startswith("cluster ")


def test_attach_mode_names_the_users_own_listener_and_serves_it(make_workload: Any) -> None:
    """Attach mode said "start your service on 127.0.0.1:PORT" without a word about the port
    being taken: the listener there is named (it may be the service the developer started)."""
    w = make_workload()
    b, port = w.attach()
    assert re.search(rf"already listening on this machine: 127\.0\.0\.1:{port} \(pid \d+",
                     b.stderr), b.stderr
    until_laptop_answers(w.service_ip(), 80, f"laptop {port}\n")
    b.signal(signal.SIGINT)
    assert b.wait() == 130 or b.wait() == 0


SQUAT_THEN_SERVE_V6 = http_server(
    'body = b"laptop v6\\n"', host="::1", ports="[PORT]", prelude="""
PORT, LOG = int(sys.argv[1]), sys.argv[2]
r, w = os.pipe()
if os.fork() == 0:  # another user's listener on 127.0.0.1:PORT, outside the command's tree
    os.setsid()
    if os.fork() == 0:
        os.setgid(65534)
        os.setuid(65534)
        sq = socket.socket()
        sq.bind(("127.0.0.1", PORT))
        sq.listen()
        os.write(w, str(os.getpid()).encode())
        while True:
            c, _ = sq.accept()
            with open(LOG, "a") as f:
                f.write("got a request\\n")
            c.close()
    os._exit(0)
print("squatter", os.read(r, 32).decode(), flush=True)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_a_squatter_on_ipv4_gets_nothing_while_the_command_listens_on_ipv6(
        make_workload: Any) -> None:
    """Issue 19.6: another local user listening on 127.0.0.1:P while the command listened on
    [::1]:P got every request (the command's bind came after bridge's check). The hand-over
    now waits for the command's own listener and forwards to the family it listens on."""
    w = make_workload()
    port = free_port()
    fd, log = tempfile.mkstemp(prefix="bridge-squatter-", dir="/tmp")
    os.close(fd)
    os.chmod(log, 0o666)
    squatter = None
    try:
        b = w.bridge("swap", "hello", "--port", f"http:{port}", "--outbound", "none", "--",
                     sys.executable, "-c", SQUAT_THEN_SERVE_V6, str(port), log)
        b.wait_for("swapped: ")
        found = re.search(r"squatter (\d+)", b.stdout)
        assert found, b.stdout
        squatter = int(found.group(1))
        ip = w.service_ip()
        until_laptop_answers(ip, 80, "laptop v6\n")
        for _ in range(10):
            assert http_get(ip, 80) == "laptop v6\n"
        b.signal(signal.SIGTERM)
        assert b.wait() in (0, 128 + signal.SIGTERM)
        with open(log) as f:
            assert f.read() == ""
    finally:
        if squatter is not None:
            try:
                os.kill(squatter, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.unlink(log)


def test_a_command_that_does_not_exist_changes_nothing(make_workload: Any) -> None:
    """Issue 21.3: `-- pyhton app.py` created the proxy, then torsocks said it was not
    found."""
    w = make_workload()
    before = untouched(w)
    code, b = w.run_bridge("swap", "hello", "--", "pyhton", "app.py")
    assert code != 0
    said = [ln for ln in b.stderr.splitlines() if ln.startswith("bridge")]
    assert said == ["bridge: error: the command 'pyhton' was not found on PATH; nothing was "
                    "changed"], b.stderr
    assert untouched(w) == before


# argv: PORT: serves on [::1]:PORT until GET /close, then closes its socket and stays alive.
CLOSES_ON_REQUEST = http_server('body = b"laptop v6\\n"', host="::1", after="""
if self.path == "/close":
    threading.Thread(target=lambda: (time.sleep(0.2), self.server.server_close()),
                     daemon=True).start()
""", then="""
time.sleep(3600)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_another_user_taking_the_commands_address_ends_the_session(make_workload: Any) -> None:
    """Watched while the session lasts (issue 19.6): the command closed its socket and another
    user listens where the traffic went: bridge ends the session (and restores) instead of
    sending them the cluster's requests."""
    w = make_workload()
    port = free_port()
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--outbound", "none", "--",
                 sys.executable, "-c", CLOSES_ON_REQUEST, str(port))
    b.wait_for("swapped: ")
    ip = w.service_ip()
    until_laptop_answers(ip, 80, "laptop v6\n")
    http_get(ip, 80, "/close")
    squat = http_server('body = b"squatter\\n"', host="::1", ready='print("up", flush=True)')

    def squatting() -> bool:  # once the command's socket is closed
        squatter = subprocess.Popen(["/usr/bin/python3", "-c", squat, str(port)], user=65534,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        w.children.append(squatter)
        assert squatter.stdout is not None
        return squatter.stdout.readline().strip() == "up"

    wait_until("another user to listen on [::1]:PORT", squatting)
    assert b.wait() != 0
    assert f"another user listens on [::1]:{port}" in b.stderr, b.stderr
    assert "ending the session" in b.stderr


# argv: PORT LOG. Another user's listener that takes 127.0.0.1:PORT for 0.3 s at a time (less
# than the poll's second), every 1.5 s: the window between two checks of the ports. Each
# connection it accepts: the bytes it got, a line in LOG.
SQUAT_IN_THE_WINDOW = """
import socket, sys, time
PORT, LOG = int(sys.argv[1]), sys.argv[2]
end = time.monotonic() + 90
while time.monotonic() < end:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", PORT))
    except OSError:
        s.close()
        time.sleep(0.05)
        continue
    s.listen(64)
    s.settimeout(0.05)
    until = time.monotonic() + 0.3
    while time.monotonic() < until:
        try:
            c, _ = s.accept()
        except OSError:
            continue
        c.settimeout(0.5)
        got = 0
        try:
            while data := c.recv(65536):
                got += len(data)
        except OSError:
            pass
        with open(LOG, "a") as f:
            f.write(f"{got}\\n")
        c.close()
    s.close()
    time.sleep(1.2)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_a_squatter_inside_the_polls_window_gets_no_request_in_attach_mode(
        make_workload: Any) -> None:
    """Issue 19.6: in attach mode the ports were checked once a second; another user who bound
    127.0.0.1:P in between got 6 requests. Every forwarded connection is now proven before a
    byte goes into it: the squatter accepts connections and gets nothing, and the session ends
    with one line naming the port and the uid (the tunnel's, or the poll's if it looked
    first), the cluster restored."""
    w = make_workload()
    b, port = w.attach()
    ip = w.service_ip()
    until_laptop_answers(ip, 80, f"laptop {port}\n")
    for child in w.children:  # the developer stops their service
        if isinstance(child, subprocess.Popen) and child.args[-1:] == [str(port)]:
            child.kill()
            child.wait(timeout=10)
    fd, log = tempfile.mkstemp(prefix="bridge-squatter-", dir="/tmp")
    os.close(fd)
    os.chmod(log, 0o666)
    squatter = subprocess.Popen(["/usr/bin/python3", "-c", SQUAT_IN_THE_WINDOW, str(port), log],
                                user=65534, group=65534, extra_groups=[],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w.children.append(squatter)
    try:
        deadline = time.monotonic() + 60
        while b.proc.poll() is None and time.monotonic() < deadline:
            try:  # the cluster's clients go on sending requests
                http_get(ip, 80, "/secret", timeout=2)
            except OSError:
                time.sleep(0.02)
        assert b.wait() != 0, b.stderr
        with open(log) as f:
            got = f.read().split()
        assert all(n == "0" for n in got), f"the squatter received bytes: {got}"
        said = [ln for ln in b.stderr.splitlines() if "another user" in ln]
        assert said and (f"took a connection to 127.0.0.1:{port}" in said[0] or
                         f"another user listens on 127.0.0.1:{port}" in said[0]), b.stderr
        assert "uid 65534" in said[0] and "restored" in said[0], said[0]
        w.assert_restored()
    finally:
        squatter.kill()
        squatter.wait(timeout=10)
        os.unlink(log)
