"""`bridge status` (bridge.status): a stale session comes with the exact command that repairs
it; the user's own live bridge here is named as such."""

from __future__ import annotations

import datetime as dt
import shlex

from bridge import status
from bridge.model import state

T0 = dt.datetime(2026, 12, 7, 14, 5, tzinfo=dt.UTC)


def _dep(name: str, session: str) -> dict[str, object]:
    lk = state.Lock(session=session, owner="ann@laptop", replicas=2,
                    proxy=f"{name}-bridge-{session}", ports="80", started_at=T0)
    return {"metadata": {"name": name, "annotations": state.encode(lk)}}


def test_a_stale_session_gets_the_exact_restore_command() -> None:
    deps = [_dep("hello", "ab12cd34"), _dep("web", "cd34ab12"), _dep("api", "ef56ab12")]
    rows = status.rows(deps, T0, {"hello": state.Stale(61), "web": state.Alive(2),
                                  "api": state.Ended(4242)})
    assert status.restore_commands(rows, "shop") == [
        "deployment/api: its session is stale; repair it with: bridge restore api -n shop",
        "deployment/hello: its session is stale; repair it with: bridge restore hello -n shop"]
    # names from the user's own options, quoted for the shell
    line = status.restore_commands(rows, "my shop", "prod; rm -rf ~", "/k/my config")[1]
    command = line.partition("; repair it with: ")[2]
    assert shlex.split(command) == ["bridge", "restore", "hello", "-n", "my shop", "--context",
                                    "prod; rm -rf ~", "--kubeconfig", "/k/my config"]


def test_own_running_bridge_is_live_and_named() -> None:
    mine = state.Running(0.0, 4242, "/dev/pts/3", dt.datetime(2026, 12, 7, 14, 5))
    assert status.describe(mine) == (
        "your bridge here (pid 4242, terminal /dev/pts/3, started 14:05)", "live")
    rows = status.rows([_dep("hello", "ab12cd34")], T0, {"hello": mine})
    assert status.restore_commands(rows, "shop") == []
