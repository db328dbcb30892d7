"""Local port squatting (issue 13, item 7): a listener of another user on a forwarded port is
found, one of our own is not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from bridge.local import ports as localports
from bridge.local.ports import Listener

LISTEN = ("import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); "
          "s.listen(); print('up', flush=True); sys.stdin.read()")


def test_squatters_pure() -> None:
    found = [Listener("127.0.0.1", 8080, 10, 1000), Listener("0.0.0.0", 9090, None, None),
             Listener("10.0.0.5", 7070, None, None), Listener("::", 6060, 11, 0),
             Listener("127.0.0.1", 5050, 12, 0)]
    taken = localports.squatters([8080, 9090, 7070, 6060, 5050, 4040], 0, found)
    assert set(taken) == {8080, 9090}  # not 7070 (another address), not ours (6060, 5050)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a listener as another user")
def test_a_listener_of_another_user_is_named_and_ours_is_not() -> None:
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/python3", "-c", LISTEN, str(port)], user=65534,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        why = localports.problem([port])
        assert f"127.0.0.1:{port}" in why and "uid 65534" in why and "\n" not in why
    finally:
        proc.kill()
        proc.wait(timeout=10)
    own = subprocess.Popen([sys.executable, "-c", LISTEN, str(port)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert own.stdout is not None and own.stdout.readline().strip() == "up"
        assert localports.problem([port]) == ""
    finally:
        own.kill()
        own.wait(timeout=10)
