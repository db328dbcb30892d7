"""The lease's view of other sessions (bridge.swap.lease: watch_sessions, clear_the_way): a
lock held by this user's own bridge on this machine is named as such at once, unwatched."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bridge import status
from bridge.errors import BridgeError
from bridge.local import records
from bridge.model import state
from bridge.model.outcome import Outcome
from bridge.progress import Progress
from bridge.swap import lease
from tests.unit.support import FakeKube

REPO = Path(__file__).resolve().parents[3]
SESSION = "ab12cd34"


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setenv("BRIDGE_OWNER", "root@vm")  # who this bridge is: the lock's owner
    return tmp_path


def _locked(kube: FakeKube) -> state.Lock:
    lk = state.Lock(session=SESSION, owner="root@vm", replicas=2,
                    proxy=f"hello-bridge-{SESSION}", ports="80",
                    started_at=dt.datetime.now(dt.UTC))
    kube.add("hello", 0, state.encode(lk))
    return lk


def _clear(kube: FakeKube, ttl: float) -> str:
    """The error line clear_the_way ended with ("" if it let the swap go on), then what it
    printed."""
    out = io.StringIO()

    async def main() -> None:
        await lease.clear_the_way(kube, await kube.get_deployment("hello"), ttl=ttl, bound=5,
                                  progress=Progress(stream=out), outcome=Outcome())

    try:
        anyio.run(main)
        error = ""
    except BridgeError as e:
        error = str(e)
    return error + "\n" + out.getvalue()


def test_a_second_swap_names_the_users_own_live_bridge_at_once() -> None:
    kube = FakeKube()
    _locked(kube)
    records.register(SESSION, kube.namespace, "hello")  # this process holds it
    me = records.read(SESSION)
    assert me is not None
    started = dt.datetime.fromtimestamp(me.started).astimezone().strftime("%H:%M")
    kube.calls.clear()
    text = _clear(kube, ttl=5)  # (watched, it would be stale after 5 s and repaired)
    first = text.splitlines()[0]
    assert first.startswith(f"you are already swapping deployment/hello in another bridge "
                            f"(pid {os.getpid()}, ")
    assert first.endswith(f"started {started}); end it first (Ctrl-C there), or run "
                          "`bridge restore hello` if it hangs")
    assert "ask them" not in text and "checking whether" not in text
    # the test's read and the re-read after the verdict: no look at any heartbeat
    assert kube.calls == ["get_deployment", "get_deployment"]
    assert kube.deployments["hello"]["spec"]["replicas"] == 0  # nothing touched


@pytest.mark.parametrize("recorded", [False, True])
def test_another_users_or_machines_session_is_still_watched(
        recorded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """No record here (another user, another machine), or a record but another owner (people
    sharing an account, each with their BRIDGE_OWNER): the heartbeat decides, as before."""
    kube = FakeKube()
    _locked(kube)
    if recorded:
        records.register(SESSION, kube.namespace, "hello")
        monkeypatch.setenv("BRIDGE_OWNER", "bob@vm")
    text = _clear(kube, ttl=0.3)  # no proxy, no beat: stale after the TTL, repaired first
    assert text.startswith("\n")  # repaired, the swap goes on
    assert "root@vm (session ab12cd34); checking whether that session is alive" in text
    assert "restoring it first" in text


def test_a_record_of_another_deployment_or_a_dead_process_is_not_a_live_own_session() -> None:
    records.register(SESSION, "ns", "web")
    assert lease.running_here(SESSION, "ns", "hello") is None
    assert lease.running_here(SESSION, "other", "web") is None
    mine = lease.running_here(SESSION, "ns", "web")
    assert mine is not None and mine.pid == os.getpid()
    p = subprocess.run(
        [sys.executable, "-c", "import sys; from bridge.local import records; "
         "records.register(*sys.argv[1:])", "cd34ab12", "ns", "hello"],
        cwd=REPO, check=True, env=os.environ.copy())
    assert p.returncode == 0
    assert lease.running_here("cd34ab12", "ns", "hello") is None  # that bridge exited


def test_watch_sessions_gives_running_for_own_and_status_says_so() -> None:
    kube = FakeKube()
    lk = _locked(kube)
    records.register(SESSION, kube.namespace, "hello")

    async def main() -> dict[str, state.Liveness]:
        return await lease.watch_sessions(kube, {"hello": (kube.deployments["hello"], lk)},
                                          ttl=5, progress=Progress(stream=io.StringIO()))

    seen = anyio.run(main)["hello"]
    assert isinstance(seen, state.Running) and seen.pid == os.getpid()
    heartbeat, live = status.describe(seen)
    assert live == "live" and heartbeat.startswith(f"your bridge here (pid {os.getpid()}")
