"""Zero-gap both ways, measured with a continuous client, and the command never outliving bridge.

A client opens a new connection to the Service's ClusterIP every 10 ms for the whole swap in,
hold and hand-back, cycle after cycle; every answer says who served it (`cluster ...` or
`laptop ...`). On Ctrl-C or SIGTERM bridge gives the traffic back (original Ready and in the
endpoints, proxy out of them) before the command is signalled: not one request may fail.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import pytest

from bridge.model.lifecycle import HAND_BACK_LINE

from .support import LOCAL_SERVER, free_port, http_get, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

CYCLES = 10
EVERY = 0.01  # seconds between the client's requests (each on a new connection)


class Client:
    """One request every EVERY seconds on a new connection; who answered, or why it failed."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.answers: list[str] = []
        self.failures: list[str] = []
        self.times: list[float] = []  # when each request was sent (time.monotonic())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 900  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                self.answers.append(http_get(self.ip, 80, timeout=5).split()[0])
            except OSError as e:
                # when, against the last answer from the laptop: a request sent after the
                # laptop stopped answering that still reached the proxy says the node kept
                # routing to it (the hand-back's cause to look for)
                laptop = self.last("laptop")
                since = f"{started - laptop:.3f}s after" if laptop else "with no"
                self.failures.append(f"after answer {len(self.answers)}, sent {since} the last "
                                     f"answer from the laptop: {e}")
                self.answers.append("failed")
            self.times.append(started)
            time.sleep(EVERY)

    def last(self, who: str) -> float:
        """When the last request `who` answered was sent (0.0: none)."""
        for answer, at in zip(reversed(self.answers), reversed(self.times), strict=True):
            if answer == who:
                return at
        return 0.0

    def __enter__(self) -> Client:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def wait_for(self, who: str, count: int = 3) -> None:
        """Until the last `count` answers all came from `who`."""
        wait_until(f"{count} answers from the {who}",
                   lambda: self.answers[-count:] == [who] * count)


def swap_with_child(w: Any, port: int) -> Any:
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--", sys.executable, "-c",
                 LOCAL_SERVER, str(port))
    b.wait_for("swapped: ")
    return b


LAPTOP_SIGNAL = pytest.mark.only_on("local", why="SIGTERM or Ctrl-C is the laptop's business; the "
                                                 "zero-gap hand-back after Ctrl-C runs on both "
                                                 "clusters")


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=LAPTOP_SIGNAL)],
    ids=["ctrl-c", "sigterm"])
def test_no_request_fails_over_swap_cycles(make_workload: Any, sig: int) -> None:
    w = make_workload()
    with Client(w.service_ip()) as client:
        client.wait_for("cluster")
        for cycle in range(CYCLES):
            b = swap_with_child(w, free_port())
            client.wait_for("laptop")
            b.signal(sig)
            assert b.wait() == 128 + sig, b.stderr
            err = b.stderr
            client.wait_for("cluster")
            assert client.failures == [], f"cycle {cycle}: {client.failures}\n{err}"
            assert HAND_BACK_LINE in err, err
            # traffic was back before the command was told to stop
            assert err.index("the proxy pod to leave the Service endpoints") < \
                err.index(f"{signal.Signals(sig).name}: passing it to the command"), err
    served = {who: client.answers.count(who) for who in ("cluster", "laptop")}
    print(f"\n{CYCLES} cycles ended by {signal.Signals(sig).name}: {len(client.answers)} "
          f"requests, {served}, failed {len(client.failures)}")
    assert client.failures == []
    assert served["laptop"] >= 3 * CYCLES


def test_a_command_that_exits_on_its_own(make_workload: Any) -> None:
    """Nothing on the laptop answers any more: the proxy turns not Ready at once (no endpoint
    that accepts and drops) and the restore follows; the requests lost are counted."""
    w = make_workload()
    port = free_port()
    with Client(w.service_ip()) as client:
        client.wait_for("cluster")
        b = swap_with_child(w, port)
        client.wait_for("laptop")
        before = len(client.answers)
        try:
            http_get("127.0.0.1", port, "/exit/3")
        except OSError:
            pass  # the child may exit before the answer is complete
        assert b.wait() == 3, b.stderr
        client.wait_for("cluster")
        lost = client.answers[before:].count("failed")
    print(f"\ncommand exited on its own: {lost} of {len(client.answers) - before} requests "
          "failed between its exit and the restore")
    assert "command exited with code 3" in b.stderr
    assert "deployment/hello restored" in b.stderr


TREE = r"""
import os, subprocess, sys
pid_file, port = sys.argv[1], sys.argv[2]
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(pid_file, "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}\n")
sys.argv = [sys.argv[0], port]
""" + LOCAL_SERVER


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.only_on("local", why="the laptop's process tree")
def test_kill_9_of_bridge_stops_the_command_tree(make_workload: Any, tmp_path: Any) -> None:
    """bridge dies by SIGKILL: no cleanup of its own runs, yet within 2 s nothing of the
    command's tree is left (PR_SET_PDEATHSIG + the watcher); `bridge restore` restores."""
    w = make_workload()
    port = free_port()
    pid_file = tmp_path / "pids"
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--", sys.executable, "-c", TREE,
                 str(pid_file), str(port))
    b.wait_for("swapped: ")
    pids = [int(p) for p in pid_file.read_text().split()]
    assert all(_alive(p) for p in pids)
    b.kill()
    wait_until("the command's tree to be gone", lambda: not any(_alive(p) for p in pids),
               timeout=2.0, every=0.05)  # the bound the issue sets: 2 s
    w.assert_swapped()  # bridge did not restore: it was killed
    code, r = w.run_bridge("restore", "hello")
    assert code == 0, r.stderr
    assert "still runs on this machine" not in r.stderr
    w.assert_restored()


ESCAPE = r"""
import os, sys, time
pid_file, port, server = sys.argv[1], sys.argv[2], sys.argv[3]
# a daemon of the command, made the classic way (double fork): a session of its own and its
# parent gone at once, so it is neither in the command's session nor below the command in the
# process tree, and the watcher that stops the command's tree when bridge dies cannot find it.
# (A daemon still below the command when bridge dies is stopped with it: a race between
# PDEATHSIG and the watcher, which made this test flaky while the daemon was a direct child.)
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.execv(sys.executable, [sys.executable, "-c", server, port])
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(pid_file + ".tmp", pid_file)
    os._exit(0)
os.wait()
time.sleep(3600)
"""


@pytest.mark.only_on("local", why="a process and a port of the laptop's")
def test_restore_reports_a_leftover_process_holding_the_port(make_workload: Any,
                                                             tmp_path: Any) -> None:
    w = make_workload()
    port = free_port()
    pid_file = tmp_path / "pid"
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--", sys.executable, "-c", ESCAPE,
                 str(pid_file), str(port), LOCAL_SERVER)
    b.wait_for("swapped: ")
    wait_until("the daemon's pid", lambda: pid_file.exists() and pid_file.read_text())
    daemon = int(pid_file.read_text())
    try:
        b.kill()
        wait_until("the daemon to still listen", lambda: http_get("127.0.0.1", port))
        code, r = w.run_bridge("restore", "hello")
        assert code == 0, r.stderr
        assert f"still runs on this machine: pid {daemon} " in r.stderr, r.stderr
        assert f"listening on 127.0.0.1:{port}; stop it with `kill {daemon}`" in r.stderr
    finally:
        try:
            os.kill(daemon, signal.SIGKILL)
        except ProcessLookupError:
            pass
