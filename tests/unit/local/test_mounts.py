"""bridge/local/mounts.py: the pod's files on this machine, copy and live (sshfs -o passive),
against a real sidecar on this host whose mounts are kubelet-style symlink farms
(tests/sidecar/test_files.py builds them). Nothing may be left mounted or on disk: after the
end, after Ctrl-C, and after SIGKILL + the leftover cleanup `bridge restore` runs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import psutil
import pytest

from bridge.errors import BridgeError
from bridge.local import mounts
from bridge.progress import QUIET, Progress
from sidecar import protocol
from tests.helpers import stop_process
from tests.sidecar.harness import (
    APP_YAML,
    REPO,
    TLS_KEY,
    ClientKey,
    Pod,
    Sidecar,
    make_key,
    make_pod,
    running_sidecar,
)

LIVE = mounts.live_problem()
needs_live = pytest.mark.skipif(LIVE is not None, reason=f"live mode cannot work here: {LIVE}")
# These tests see mounts in /proc/mounts, as bridge/local/mounts.py does: Linux-only (elsewhere
# the code finds no mounts, so only copy mode's files could be checked, not its no-mount claim).
proc_mounts = pytest.mark.skipif(not os.path.exists("/proc/mounts"),
                                 reason="mounts are read from /proc/mounts (Linux-only)")
WAIT = 30.0  # bound on waiting for something to appear or go (not a timing assertion)


# ------------------------------------------------------------------ pure decisions


def test_choose_mode() -> None:
    assert mounts.choose_mode("auto", None)[0] == "live"
    mode, said = mounts.choose_mode("auto", "sshfs is not installed")
    assert mode == "copy" and "sshfs is not installed" in said
    assert mounts.choose_mode("copy", None)[0] == "copy"
    with pytest.raises(BridgeError, match="--mount-mode live: no FUSE; .*nothing was changed"):
        mounts.choose_mode("live", "no FUSE")


def test_root_problem(tmp_path: Path) -> None:
    assert mounts.root_problem(str(tmp_path / "new")) is None
    assert mounts.root_problem(str(tmp_path)) is None  # empty
    (tmp_path / "x").write_text("mine")
    assert "not empty" in (mounts.root_problem(str(tmp_path)) or "")
    assert "not a directory" in (mounts.root_problem(str(tmp_path / "x")) or "")
    assert "does not exist" in (mounts.root_problem(str(tmp_path / "no" / "dir")) or "")


@pytest.mark.parametrize("name,ok", [("app.yaml", True), ("..data", True), ("..", False),
                                     (".", False), ("a/b", False), ("", False),
                                     ("../../x", False)])
def test_safe_name(name: str, ok: bool) -> None:
    assert mounts.safe_name(name) is ok


# ------------------------------------------------------------------ against a sidecar


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return make_pod(tmp_path, writable_data=False)


@pytest.fixture
def sidecar(tmp_path: Path, key: ClientKey, pod: Pod) -> Iterator[Sidecar]:
    env = {protocol.ENV_MOUNTS: json.dumps(pod.mounts)}
    with running_sidecar(tmp_path, key, extra_env=env) as sc:
        yield sc


@pytest.fixture
def key(tmp_path: Path) -> ClientKey:
    return make_key(tmp_path, "id_bridge")


def check_pod_files(root: Path, mode: str = "copy") -> None:
    assert (root / "etc/config/app.yaml").read_text() == APP_YAML
    assert (root / "var/run/secrets/app/tls.key").read_text() == TLS_KEY
    assert (root / "data/prepared.txt").read_text() == "written by an init container\n"
    assert refused(root / "etc/config/etc-link/passwd")
    assert refused(root / "etc/config/passwd-link")
    assert "etc-link" not in os.listdir(root / "etc/config")
    assert sorted(os.listdir(root)) == ["data", "etc", "var"]
    # secrets: this user only (a copy: mode 700; a FUSE mount: no allow_other, so the kernel
    # lets only the mounting user in)
    if mode == "copy":
        assert (root.stat().st_mode & 0o077) == 0
    else:
        options = [line.split()[3] for line in Path("/proc/mounts").read_text().splitlines()
                   if line.split()[1] == str(root)]
        assert len(options) == 1 and "allow_other" not in options[0].split(",")


def refused(path: Path) -> bool:
    """Not there (a copy) or refused (live: the sidecar says permission denied)."""
    try:
        path.read_bytes()
    except (FileNotFoundError, PermissionError):
        return True
    return False


def mounted(path: str | Path) -> bool:
    return any(line.split()[1] == str(path) for line in
               Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 2)


def records(state_home: Path) -> list[Path]:
    return list((state_home / "bridge" / "mounts").glob("*.json"))


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@proc_mounts
@pytest.mark.parametrize("mode", ["copy", pytest.param("live", marks=needs_live)])
def test_provides_the_pods_files_and_leaves_nothing(
        sidecar: Sidecar, key: ClientKey, state_home: Path, mode: str) -> None:
    seen: dict[str, str] = {}

    async def scenario() -> None:
        conn = await sidecar.connect(key)
        async with conn, mounts.provide(conn, mode, None, progress=Progress(QUIET),
                                        session="t1") as root:
            seen["root"] = root
            # off the event loop: in live mode this loop carries sshfs's traffic
            await asyncio.to_thread(check_pod_files, Path(root), mode)
            assert len(records(state_home)) == 1
            assert mounted(root) == (mode == "live")

    run(scenario())
    assert not mounted(seen["root"])
    assert not os.path.exists(seen["root"])
    assert records(state_home) == []


def test_a_given_directory_is_emptied_not_removed(
        sidecar: Sidecar, key: ClientKey, state_home: Path, tmp_path: Path) -> None:
    given = tmp_path / "mine"
    given.mkdir()

    async def scenario() -> None:
        conn = await sidecar.connect(key)
        async with conn, mounts.provide(conn, "copy", str(given), progress=Progress(QUIET),
                                        session="t2") as root:
            assert root == str(given)
            await asyncio.to_thread(check_pod_files, given)

    run(scenario())
    assert given.is_dir() and list(given.iterdir()) == []


def test_copy_limit_is_a_clear_error_and_leaves_nothing(
        sidecar: Sidecar, key: ClientKey, state_home: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        conn = await sidecar.connect(key)
        async with conn, mounts.provide(conn, "copy", str(tmp_path / "files"),
                                        progress=Progress(QUIET), session="t3", copy_limit=40):
            raise AssertionError("the copy should have failed")

    with pytest.raises(BridgeError, match=r"pass the copy limit of .* MiB at /[^ ]+ .*"
                                          r"--mount-mode live"):
        run(scenario())
    assert not (tmp_path / "files").exists()
    assert records(state_home) == []


@needs_live
def test_live_mode_sees_a_configmap_update_and_refuses_writes(
        sidecar: Sidecar, key: ClientKey, state_home: Path, pod: Pod) -> None:
    async def scenario() -> None:
        conn = await sidecar.connect(key)
        async with conn, mounts.provide(conn, "live", None, progress=Progress(QUIET),
                                        session="t4") as root:
            # off the event loop: this loop carries sshfs's traffic
            await asyncio.to_thread(live_checks, Path(root), pod)

    run(scenario())
    assert (pod.root / "configmap/app.yaml").read_text() == "greeting: updated\n"
    assert not (pod.root / "emptydir/new.txt").exists()


def live_checks(root: Path, pod: Pod) -> None:
    app = root / "etc/config/app.yaml"
    assert app.read_text() == APP_YAML
    kubelet_update(pod.root / "configmap", {"app.yaml": "greeting: updated\n"})
    wait_until("the update never showed", lambda: app.read_text() == "greeting: updated\n")
    with pytest.raises(OSError):
        app.write_text("from the laptop")
    with pytest.raises(OSError):
        (root / "data/new.txt").write_text("from the laptop")


def kubelet_update(volume: Path, files: dict[str, str]) -> None:
    """What the kubelet's atomic writer does: a new timestamped dir, then ..data swapped."""
    stamp = volume / "..2024_05_06_07_08_09.987654321"
    stamp.mkdir()
    for name, text in files.items():
        (stamp / name).write_text(text)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(stamp.name)
    os.rename(tmp, volume / "..data")


# ------------------------------------------------------------------ Ctrl-C and SIGKILL

CHILD = """
import asyncio, sys
import asyncssh
from bridge.local import mounts
from bridge.progress import QUIET, Progress

async def main():
    port, host_key, key_path, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    conn = await asyncssh.connect(
        "127.0.0.1", int(port), username="developer", client_keys=[key_path],
        known_hosts=([asyncssh.import_public_key(host_key)], [], []), agent_path=None)
    async with mounts.provide(conn, mode, None, progress=Progress(QUIET), session="kid") as root:
        print(root, flush=True)
        await asyncio.sleep(3600)

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def start_child(sidecar: Sidecar, key: ClientKey, mode: str,
                state_home: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(sidecar.ssh_port), sidecar.host_key_line,
         str(key.path), mode],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "XDG_STATE_HOME": str(state_home)})
    assert proc.stdout is not None
    root = proc.stdout.readline().strip()
    if not root:
        stop_process(proc, 10)
        raise AssertionError(f"the child printed no root: {proc.stderr.read()}")  # type: ignore[union-attr]
    return proc, root


def wait_until(what: str, check: object) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@proc_mounts
@pytest.mark.parametrize("mode", ["copy", pytest.param("live", marks=needs_live)])
def test_ctrl_c_leaves_nothing(sidecar: Sidecar, key: ClientKey, state_home: Path,
                               mode: str) -> None:
    proc, root = start_child(sidecar, key, mode, state_home)
    try:
        assert (Path(root) / "etc/config/app.yaml").read_text() == APP_YAML
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
        assert "interrupted" in out, err
    finally:
        stop_process(proc, 10)
    assert not mounted(root)
    assert not os.path.exists(root)
    assert records(state_home) == []


@proc_mounts
@pytest.mark.parametrize("mode", ["copy", pytest.param("live", marks=needs_live)])
def test_sigkill_then_restore_cleanup_leaves_nothing(
        sidecar: Sidecar, key: ClientKey, state_home: Path, mode: str) -> None:
    proc, root = start_child(sidecar, key, mode, state_home)
    try:
        assert (Path(root) / "var/run/secrets/app/tls.key").read_text() == TLS_KEY
        proc.kill()
        proc.wait(timeout=WAIT)
    finally:
        stop_process(proc, 10)
    # live: the channel closed, so sshfs exited and its auto_unmount helper unmounted
    wait_until("the mount outlived bridge", lambda: not mounted(root))
    assert os.path.exists(root)  # what the killed bridge left: the directory (and a copy)
    assert len(records(state_home)) == 1
    said: list[str] = []
    assert mounts.cleanup_leftovers(said.append) == 1
    assert not os.path.exists(root)
    assert records(state_home) == []
    assert any(root in line for line in said)


def test_cleanup_leaves_a_running_sessions_files_alone(
        sidecar: Sidecar, key: ClientKey, state_home: Path) -> None:
    proc, root = start_child(sidecar, key, "copy", state_home)
    try:
        assert mounts.cleanup_leftovers(lambda _: None) == 0
        assert (Path(root) / "etc/config/app.yaml").read_text() == APP_YAML
    finally:
        try:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=WAIT)
        finally:
            stop_process(proc, 10)  # also when the Ctrl-C went unanswered
    assert not os.path.exists(root)


PROBE = """
import json, os, sys
path = sys.argv[1]
try:
    if os.path.isdir(path):
        print(json.dumps(sorted(os.listdir(path))))
    else:
        print(json.dumps(open(path).read()))
except FileNotFoundError:
    print("gone")
except OSError as e:
    print("ERROR", e)
"""


def probe(path: str | Path, timeout: float = WAIT) -> str:
    """What `path` holds (a directory: the JSON list of its names; a file: its text as JSON),
    "gone", or "ERROR ...", read by a child process: an access of a FUSE mount whose sshfs
    does not answer blocks in the kernel, which no timeout of this process could interrupt,
    so the child is killed instead (a FUSE request's wait is killable)."""
    proc = subprocess.Popen([sys.executable, "-c", PROBE, str(path)], stdout=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"an access of {path} blocked for {timeout:g}s (a FUSE mount "
                             "that does not answer)") from None
    return out.strip()


def auto_unmount_helpers(root: Path) -> list[psutil.Process]:
    """The fusermount3 processes sshfs's auto_unmount left waiting for sshfs to end."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if (proc.info["name"] or "").startswith("fusermount") and \
                str(root) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


@needs_live
def test_a_live_mount_rides_a_new_connection_after_a_reconnect(
        sidecar: Sidecar, key: ClientKey, state_home: Path) -> None:
    async def scenario() -> None:
        first = await sidecar.connect(key)
        files = mounts.LiveFiles(first, None, writable=False, progress=Progress(QUIET),
                             session="t5", copy_limit=mounts.COPY_LIMIT)
        try:
            root = Path(await files.start())
            first.close()  # the tunnel dropped
            await first.wait_closed()
            second = await sidecar.connect(key)
            async with second:
                await files.reattach(second)
                text = await asyncio.to_thread(probe, root / "etc/config/app.yaml")
                assert text == json.dumps(APP_YAML)
                assert mounted(root)
        finally:
            await files.close()
        seen["root"] = root

    seen: dict[str, Path] = {}
    run(scenario())
    assert not mounted(seen["root"]) and probe(seen["root"]) == "gone"
    assert records(state_home) == []


@needs_live
def test_a_remount_works_while_the_old_sshfs_socket_is_still_held_open(
        sidecar: Sidecar, key: ClientKey, state_home: Path) -> None:
    """sshfs's auto_unmount helper (fusermount3) inherits sshfs's end of the socket, so the
    old socket reads EOF only once that helper has ended too (here it is stopped, as a busy
    machine delays it). bridge's end of the old socket must still be closed through its
    asyncio transport: closed under the transport, the event loop keeps a stale registration
    for its descriptor number, the new socket gets that number and is never read, sshfs never
    finishes its SFTP start, and every access of the mount blocks (issue 15's known bug)."""
    stopped: list[psutil.Process] = []

    async def scenario() -> None:
        first = await sidecar.connect(key, keepalive_interval=0.2, keepalive_count_max=2)
        files = mounts.LiveFiles(first, None, writable=False, progress=Progress(QUIET),
                             session="t6", copy_limit=mounts.COPY_LIMIT)
        try:
            root = seen["root"] = Path(await files.start())
            for helper in auto_unmount_helpers(root):
                helper.suspend()
                stopped.append(helper)
            assert stopped, "sshfs ran without its auto_unmount helper"
            # lost as in the field: the sidecar stalls until the keepalives give up, so the
            # files channel ends with an error (no EOF reaches sshfs, which stays up)
            frozen = psutil.Process(sidecar.proc.pid)
            frozen.suspend()
            try:
                await first.wait_closed()
            finally:
                frozen.resume()
            second = await sidecar.connect(key)
            async with second:
                await files.reattach(second)
                text = await asyncio.to_thread(probe, root / "etc/config/app.yaml")
                assert text == json.dumps(APP_YAML)
        finally:
            await files.close()
        seen["root"] = root

    seen: dict[str, Path] = {}
    try:
        run(scenario())
    finally:
        for helper in stopped:
            with contextlib.suppress(psutil.Error):
                helper.kill()
        if mounted(seen.get("root", "")):  # never leave a dead FUSE mount behind
            subprocess.run(["fusermount3", "-u", "-z", str(seen["root"])], timeout=WAIT)
    assert not mounted(seen["root"]) and probe(seen["root"]) == "gone"
    assert records(state_home) == []


class SilentServer(asyncssh.SSHServer):
    """An SSH server whose `sftp` subsystem takes the channel and never answers: a pod that
    stalls after the channel opened."""

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return SilentSession()


class SilentSession(asyncssh.SSHServerSession[bytes]):
    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"


@needs_live
def test_a_remount_that_does_not_come_up_is_detached_and_the_session_goes_on(
        sidecar: Sidecar, key: ClientKey, state_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """sshfs mounts before its SFTP start; on a channel nobody answers, the re-made mount would
    be listed but block every access. The re-mount is bounded: then sshfs is ended, the mount
    point detached, and the session goes on, told the files are no longer live."""
    monkeypatch.setattr(mounts, "MOUNT_TIMEOUT", 3.0)
    said = io.StringIO()

    async def scenario() -> None:
        server = await asyncssh.create_server(
            SilentServer, "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key(
                "ssh-ed25519")])
        port = server.sockets[0].getsockname()[1]
        first = await sidecar.connect(key)
        files = mounts.LiveFiles(first, None, writable=False,
                             progress=Progress(QUIET, stream=said), session="t7",
                             copy_limit=mounts.COPY_LIMIT)
        try:
            root = seen["root"] = Path(await files.start())
            first.close()
            await first.wait_closed()
            async with asyncssh.connect("127.0.0.1", port, username="developer",
                                        known_hosts=None, client_keys=None,
                                        agent_path=None) as silent:
                await files.reattach(silent)  # returns: bounded, never raises
                assert files.live_lost
                assert not mounted(root)
                assert await asyncio.to_thread(probe, root) == "[]"  # answers: a plain dir
                await files.reattach(silent)  # a later reconnect leaves it be
        finally:
            await files.close()
            server.close()

    seen: dict[str, Path] = {}
    try:
        run(scenario())
    finally:
        if mounted(seen.get("root", "")):  # never leave a dead FUSE mount behind
            subprocess.run(["fusermount3", "-u", "-z", str(seen["root"])], timeout=WAIT)
    lines = [ln for ln in said.getvalue().splitlines() if "no longer live" in ln]
    assert len(lines) == 1, said.getvalue()
    assert f"the pod's files at {seen['root']} are no longer live" in lines[0]
    assert "did not answer within 3s" in lines[0]
    assert probe(seen["root"]) == "gone"
    assert records(state_home) == []
