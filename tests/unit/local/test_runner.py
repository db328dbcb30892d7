"""bridge.local.runner: real processes — exit codes, signal deaths, whole trees terminated."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from bridge.errors import BridgeError
from bridge.local.runner import Child, exit_status

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def _read_pids(path: Path) -> list[int]:
    try:
        with open(path) as file:
            return [int(x) for x in file.read().split()]
    except FileNotFoundError:
        return []


async def _pids_from(path: Path, count: int) -> list[int]:
    """The pids a test script wrote to `path`, once there are `count` of them."""
    while True:
        pids = _read_pids(path)
        if len(pids) >= count:
            return pids
        await asyncio.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_exit_status_mapping() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGTERM) == 128 + 15
    assert exit_status(-signal.SIGKILL) == 137


def test_exit_code_is_propagated() -> None:
    async def main() -> int:
        child = await Child.start(["sh", "-c", "exit 3"], ENV)
        return await child.wait()

    assert run(main()) == 3


def test_environment_is_exactly_the_given_one(tmp_path: Path) -> None:
    out = tmp_path / "env"

    async def main() -> int:
        env = {**ENV, "FROM_POD": "multi\nline $x"}
        child = await Child.start(["sh", "-c", 'printf %s "$FROM_POD" > "$0"', str(out)], env)
        return await child.wait()

    assert run(main()) == 0
    assert out.read_text() == "multi\nline $x"


def test_signal_death_is_128_plus_n() -> None:
    async def main() -> tuple[int, int]:
        first = await Child.start(["sh", "-c", "kill -TERM $$; sleep 10"], ENV)
        second = await Child.start(["sleep", "30"], ENV)
        second.send_signal(signal.SIGKILL)
        return await first.wait(), await second.wait()

    assert run(main()) == (143, 137)


def test_child_runs_in_its_own_session() -> None:
    async def main() -> tuple[int, int]:
        child = await Child.start(["sleep", "30"], ENV)
        sid = os.getsid(child.pid)
        child.send_signal(signal.SIGTERM)
        await child.wait()
        return child.pid, sid

    pid, sid = run(main())
    assert sid == pid != os.getsid(0)


def test_forwarded_signal_reaches_the_child_and_its_handler_decides_the_code(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"

    async def main() -> int:
        script = f"trap 'exit 7' INT; echo $$ > {ready}; while :; do sleep 0.05; done"
        child = await Child.start(["sh", "-c", script], ENV)
        await _pids_from(ready, 1)
        child.send_signal(signal.SIGINT)
        return await child.wait()

    assert run(main()) == 7


def test_command_not_found_is_a_bridge_error() -> None:
    with pytest.raises(BridgeError, match="command not found: no-such-command-xyz"):
        run(Child.start(["no-such-command-xyz", "arg"], ENV))


def test_command_not_executable_is_a_bridge_error(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(BridgeError, match="not executable"):
        run(Child.start([str(script)], ENV))


def test_empty_command_is_a_bridge_error() -> None:
    with pytest.raises(BridgeError):
        run(Child.start([], ENV))


def test_terminate_tree_removes_children_of_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # child -> subshell -> (sleep, subshell -> sleep): three levels below the child
    script = (
        f"( sleep 300 & echo $! >> {pids}; ( sleep 300 & echo $! >> {pids}; wait ) & wait ) & "
        f"echo $$ >> {pids}; wait"
    )

    async def main() -> tuple[list[int], int]:
        child = await Child.start(["bash", "-c", script], ENV)
        found = await _pids_from(pids, 3)
        tree = [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        await child.terminate_tree(grace=5)
        code = await child.wait()
        return sorted(set(found + tree + [child.pid])), code

    everyone, code = run(main())
    assert len(everyone) >= 5
    assert all(_gone(pid) for pid in everyone), [p for p in everyone if not _gone(p)]
    assert code == 143


def test_terminate_tree_kills_what_ignores_sigterm_after_grace(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "p = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{p.pid}}')\n"
        "time.sleep(300)\n"
    )

    async def main() -> tuple[list[int], int]:
        child = await Child.start([sys.executable, "-c", script], ENV)
        found = await _pids_from(pids, 2)
        await child.terminate_tree(grace=0.5)
        return found, await child.wait()

    found, code = run(main())
    assert all(_gone(pid) for pid in found)
    assert code == 137


def test_terminate_tree_after_exit_removes_orphans_left_in_the_session(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    async def main() -> tuple[list[int], int]:
        # The child starts a background process and exits: the orphan is re-parented away.
        child = await Child.start(["sh", "-c", f"sleep 300 & echo $! > {pids}"], ENV)
        code = await child.wait()
        found = await _pids_from(pids, 1)
        assert not _gone(found[0])
        await child.terminate_tree(grace=5)
        return found, code

    found, code = run(main())
    assert code == 0
    assert _gone(found[0])


def test_orphans_of_a_child_gone_before_it_was_looked_at_are_found(tmp_path: Path) -> None:
    """A quick child can exit before bridge reads anything about it (a busy event loop): its
    orphans still count as its tree, by the time bridge spawned it."""
    import time

    pids = tmp_path / "pids"

    async def main() -> list[int]:
        started = time.time()
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", f"sleep 300 & echo $! > {pids}", env=ENV, start_new_session=True)
        await process.wait()  # gone before the Child is made, as under load
        await asyncio.sleep(1.5)  # "now" is well after the orphan was born
        found = await _pids_from(pids, 1)
        child = Child(process, ["sh"], started)
        assert not _gone(found[0])
        await child.terminate_tree(grace=5)
        return found

    found = run(main())
    assert _gone(found[0])


def test_terminate_tree_of_an_exited_child_is_harmless() -> None:
    async def main() -> int:
        child = await Child.start(["true"], ENV)
        code = await child.wait()
        await child.terminate_tree(grace=1)
        child.send_signal(signal.SIGTERM)  # no-op, no error
        return code

    assert run(main()) == 0


AGENT = r"""
import asyncio, os, sys
from bridge.local.runner import Child

async def main() -> None:
    child = await Child.start(["sh", "-c", sys.argv[1]], {"PATH": os.environ["PATH"]})
    print(child.pid, flush=True)
    await asyncio.sleep(600)  # "bridge" holding the session, until it is SIGKILLed

asyncio.run(main())
"""


@pytest.mark.parametrize("watcher", [
    pytest.param(True, id="with-watcher"),
    pytest.param(False, id="pdeathsig-only", marks=pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="PR_SET_PDEATHSIG (prctl) is Linux-only; elsewhere the watcher stops the tree")),
])
def test_the_command_tree_dies_with_bridge_even_by_sigkill(tmp_path: Path, watcher: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """bridge is SIGKILLed (no cleanup of its own runs): the command dies with it through
    PR_SET_PDEATHSIG, and the watcher stops the rest of its tree (a grandchild ignoring
    SIGTERM included). Without the watcher, the grandchild would survive: the check is real."""
    import subprocess
    import time

    pid_file = tmp_path / "pids"
    script = (f"trap '' TERM; sleep 600 & echo $! > {pid_file}; "
              "while true; do sleep 1; done")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    if not watcher:
        env["BRIDGE_TEST_NO_REAPER"] = "1"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, script], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert agent.stdout is not None
        child = int(agent.stdout.readline())
        deadline = time.monotonic() + 30
        while not _read_pids(pid_file) and time.monotonic() < deadline:
            time.sleep(0.02)
        grandchild = _read_pids(pid_file)[0]
        agent.kill()
        agent.wait()
        deadline = time.monotonic() + 5  # bounds the wait; the e2e test checks the 2 s
        while not (_gone(child) and _gone(grandchild)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child)  # PR_SET_PDEATHSIG
        assert _gone(grandchild) is watcher
    finally:
        for pid in _read_pids(pid_file):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_leftover_process_of_a_session_is_found_with_its_ports() -> None:
    import subprocess

    from bridge.local import leftovers
    from bridge.local.envout import SESSION_VAR
    from tests.unit.support import free_port

    port = free_port()
    serve = (f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); "
             "s.listen(); print('up', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", serve], stdout=subprocess.PIPE, text=True,
                            env={**ENV, SESSION_VAR: "dead0001"})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        found = leftovers.find("dead0001")
        assert [(f.pid, f.listening) for f in found] == [(proc.pid, (port,))]
        assert found[0].describe().startswith(f"pid {proc.pid} (")
        assert found[0].describe().endswith(f"listening on 127.0.0.1:{port}")
        assert leftovers.find("other000") == []
    finally:
        proc.kill()
        proc.wait()
