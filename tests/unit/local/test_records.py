"""This machine's records of its own sessions (bridge/local/records.py): written for a real
process, judged by whether that process still runs, never a file name from a forged id."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from bridge import status
from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError
from bridge.local import records as localstate
from bridge.model import state
from bridge.model.outcome import Outcome
from bridge.progress import Progress
from tests.unit.support import FakeKube, lease_on, lock, run_restore
from tests.unit.support import clear_way as _clear
from tests.unit.support import watched_lock as _watched_lock

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    return tmp_path


HERE = localstate.Machine("laptop", 1000.0, 4026531836)


def _record(pid: int = 10, namespace: str = "ns", deployment: str = "hello",
            machine: localstate.Machine = HERE) -> localstate.SessionRecord:
    return localstate.SessionRecord("ab12cd34", namespace, deployment, pid, 1.0, 1.0, machine)


def test_judge_names_the_dead_holder_only_for_the_same_deployment() -> None:
    assert localstate.judge(None, "ns", "hello", HERE, running=False) is None
    assert localstate.judge(_record(), "ns", "hello", HERE, running=True) is None
    assert localstate.judge(_record(), "ns", "hello", HERE, running=False) == 10
    assert localstate.judge(_record(deployment="web"), "ns", "hello", HERE,
                            running=False) is None
    assert localstate.judge(_record(namespace="other"), "ns", "hello", HERE,
                            running=False) is None


def test_judge_trusts_a_pid_only_where_it_was_written() -> None:
    """A home directory shared by machines (NFS) or containers: a pid that does not run here
    may run there, and that bridge is alive. Only this host, boot and pid namespace count; an
    earlier boot of this host means the holder is gone."""
    other_host = localstate.Machine("desktop", HERE.boot, HERE.pidns)
    container = localstate.Machine(HERE.host, HERE.boot, 4026532000)
    rebooted = localstate.Machine(HERE.host, HERE.boot - 86400, 4026531999)
    later_boot = localstate.Machine(HERE.host, HERE.boot + 86400, HERE.pidns)
    rounding = localstate.Machine(HERE.host, HERE.boot + 1, HERE.pidns)
    for machine, verdict in ((other_host, None), (container, None), (rebooted, 10),
                             (later_boot, None), (rounding, 10)):
        assert localstate.judge(_record(machine=machine), "ns", "hello", HERE,
                                running=False) == verdict, machine
    assert localstate.judge(_record(machine=rebooted), "ns", "hello", HERE, running=True) == 10


def _register_in_a_child(session: str, namespace: str = "ns", deployment: str = "hello"
                         ) -> int:
    """A bridge-like process that records a session and exits; its pid."""
    p = subprocess.run(
        [sys.executable, "-c", "import os, sys; from bridge.local import records as localstate; "
         "localstate.register(*sys.argv[1:]); print(os.getpid())",
         session, namespace, deployment],
        cwd=REPO, capture_output=True, text=True, check=True, env=os.environ.copy())
    return int(p.stdout)


def test_a_session_whose_process_ended_is_known_dead_and_a_running_one_is_not(
        state_home: Path) -> None:
    pid = _register_in_a_child("ab12cd34")
    assert localstate.ended("ab12cd34", "ns", "hello") == pid
    assert localstate.ended("ab12cd34", "ns", "web") is None  # another Deployment: no verdict
    assert localstate.ended("cd34ab12", "ns", "hello") is None  # no record: no verdict
    localstate.register("cd34ab12", "ns", "hello")  # this process: running
    assert localstate.ended("cd34ab12", "ns", "hello") is None
    files = sorted(p.name for p in (state_home / "bridge" / "sessions").iterdir())
    assert files == ["ab12cd34.json", "cd34ab12.json"]
    assert (state_home / "bridge" / "sessions").stat().st_mode & 0o777 == 0o700
    assert (state_home / "bridge" / "sessions" / "cd34ab12.json").stat().st_mode & 0o777 == 0o600
    localstate.forget("ab12cd34")
    assert localstate.ended("ab12cd34", "ns", "hello") is None


def test_a_reused_pid_is_not_the_recorded_process(state_home: Path) -> None:
    localstate.register("ab12cd34", "ns", "hello")
    path = state_home / "bridge" / "sessions" / "ab12cd34.json"
    data = json.loads(path.read_text())
    data["started"] -= 3600  # the same pid, created an hour earlier: another process
    path.write_text(json.dumps(data))
    assert localstate.ended("ab12cd34", "ns", "hello") == os.getpid()


@pytest.mark.parametrize("session", ["../../etc/passwd", "a/b", "", "AB12", ".hidden", "x" * 64])
def test_a_session_id_from_the_cluster_never_becomes_a_path(state_home: Path,
                                                             session: str) -> None:
    assert localstate.read(session) is None
    assert localstate.ended(session, "ns", "hello") is None
    localstate.forget(session)  # nothing to do, nothing raised
    with pytest.raises(ValueError):
        localstate.register(session, "ns", "hello")
    assert not (state_home / "bridge").exists()


def test_a_record_not_written_by_bridge_says_nothing(state_home: Path) -> None:
    directory = state_home / "bridge" / "sessions"
    directory.mkdir(parents=True)
    (directory / "ab12cd34.json").write_text('{"session": "ab12cd34", "pid": "x"}')
    assert localstate.ended("ab12cd34", "ns", "hello") is None
    good = json.loads(json.dumps(dataclasses.asdict(_record())))
    (directory / "ab12cd34.json").write_text(json.dumps({**good, "session": "cd34ab12"}))
    assert localstate.read("ab12cd34") is None  # filed under another id
    del good["machine"]  # written where? (a record of an earlier version of this file)
    (directory / "ab12cd34.json").write_text(json.dumps(good))
    assert localstate.read("ab12cd34") is None


def test_old_records_of_ended_processes_are_pruned_and_running_ones_kept(
        state_home: Path) -> None:
    dead = _register_in_a_child("0000dead")
    assert dead
    localstate.register("0000a11e", "ns", "hello")  # this process: running
    directory = state_home / "bridge" / "sessions"
    for name in ("0000dead", "0000a11e"):
        path = directory / f"{name}.json"
        data = json.loads(path.read_text())
        data["written"] = time.time() - localstate.KEEP_UNMATCHED_S - 60
        path.write_text(json.dumps(data))
    localstate.register("12345678", "ns", "web")
    assert sorted(p.stem for p in directory.glob("*.json")) == ["0000a11e", "12345678"]


# -- wired into the lease, the restore and the second swap -----------------------------------


def test_the_record_lives_from_before_the_lock_until_the_restore_released_it() -> None:
    kube = FakeKube()
    mine = lock("ab12cd34")
    kube.add("hello", 2)
    lease = lease_on(kube, mine)
    seen_at_write: list[object] = []
    kube.on_patch = lambda name, patch: seen_at_write.append(localstate.read(mine.session))
    stack = CleanupStack(Progress(stream=io.StringIO()))

    async def nothing() -> None:
        pass

    anyio.run(lambda: lease.take(kube.deployments["hello"], outcome=Outcome(), stack=stack,
                                 restore_step=nothing))
    assert seen_at_write and seen_at_write[0] is not None  # recorded before the lock was written
    record = localstate.read(mine.session)
    assert record is not None and (record.pid, record.deployment) == (os.getpid(), "hello")
    out, _ = run_restore(kube, lock=mine)
    assert out.ok and localstate.read(mine.session) is None

    # a lock that is refused leaves no record behind
    theirs = lock("cd34ab12", "bob@desk")
    kube.deployments["hello"]["metadata"]["annotations"] = state.encode(theirs)
    other = lease_on(kube, lock("ef56ab12"))
    with pytest.raises(BridgeError, match="changed while bridge was taking it"):
        anyio.run(lambda: other.take(kube.deployments["hello"] | {"spec": {}},
                                     outcome=Outcome(), stack=stack, restore_step=nothing))
    assert localstate.read("ef56ab12") is None


def test_a_second_swap_repairs_at_once_a_session_whose_bridge_here_was_killed() -> None:
    """No TTL to sit through: this machine knows the holder's process is gone (kill -9, a
    closed terminal); the repair says so."""
    kube = FakeKube()
    lk = _watched_lock(kube, proxy=True)
    pid = _register_in_a_child(lk.session, kube.namespace, "hello")
    # (without the record: 30 s of watching, then "whose heartbeat did not change for 30s")
    dep, text = _clear(kube, ttl=30)
    assert (f"deployment/hello was swapped by ann@laptop (session {lk.session}) whose bridge "
            f"on this machine (pid {pid}) is no longer running; restoring it first") in text
    assert "checking whether that session is alive" not in text
    assert lk.proxy not in kube.deployments and kube.deployments["hello"]["spec"]["replicas"] == 2
    assert localstate.read(lk.session) is None  # repaired: its record is done with


def test_status_says_a_session_whose_bridge_here_ended_is_stale() -> None:
    assert status.describe(state.Ended(4242)) == ("bridge pid 4242 here ended", "stale")


# Issue 19, item 8: bridge's directories are 0700 and an existing one must be this user's alone.
def test_records_make_every_missing_directory_0700(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    old = os.umask(0o022)
    try:
        localstate.register("s1", "ns", "web")
    finally:
        os.umask(old)
    for d in (home / ".local", home / ".local/state", home / ".local/state/bridge",
              home / ".local/state/bridge/sessions"):
        assert oct(d.stat().st_mode & 0o777) == "0o700", d


@pytest.mark.parametrize("which", ["bridge", "bridge/sessions"])
def test_a_state_directory_others_can_write_to_is_refused(state_home: Path, which: str) -> None:
    target = state_home / which
    target.mkdir(parents=True, mode=0o700)
    target.chmod(0o775)
    with pytest.raises(BridgeError) as e:
        localstate.register("s1", "ns", "web")
    message = str(e.value)
    assert "\n" not in message and "others can write" in message and "0775" in message
    assert f"chmod 700 {target}" in message and "nothing was changed" in message
    assert not list(state_home.rglob("*.json"))


def test_a_state_directory_of_another_user_is_refused(state_home: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    target = state_home / "bridge"
    target.mkdir(mode=0o700)
    os.chown(target, 4242, 4242)
    with pytest.raises(BridgeError, match="belongs to uid 4242, not to you"):
        localstate.register("s1", "ns", "web")
    assert not list(state_home.rglob("*.json"))


def test_the_env_files_directory_is_checked_too(tmp_path: Path) -> None:
    from bridge.local import env
    from bridge.local.ide import envfile

    shared = tmp_path / ".bridge"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BridgeError, match=r"others can write to it \(mode 0777\)"):
        envfile.prepare_dir(shared)
    assert not (shared / ".gitignore").exists()
    fresh = tmp_path / "a" / "b"
    env.private_dir(fresh)
    assert oct(fresh.stat().st_mode & 0o777) == oct((tmp_path / "a").stat().st_mode & 0o777) \
        == "0o700"
    (tmp_path / "file").write_text("")
    with pytest.raises(BridgeError, match="not a directory"):
        env.private_dir(tmp_path / "file")
