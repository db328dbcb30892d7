"""The heartbeat without churn (issue 9, item 5), end to end on either cluster.

The lock is written on the original once at swap and removed at restore: in between nothing
writes the original (each annotation change would bump its metadata.generation, and the
Deployment controller copies annotations onto its ReplicaSets and never removes them). The
heartbeat is a sequence number on the proxy Deployment; another `bridge` judges a session by
watching it on its own clock, so two laptops' clocks never need to agree. After the restore no
ReplicaSet of the original carries an annotation of bridge's.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
from typing import Any

import pytest

from bridge.model import state

from .support import Workload, beat, until_the_heartbeat_settles, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

FAST = {"BRIDGE_HEARTBEAT_INTERVAL": "0.3"}


def our_replicasets(w: Workload) -> dict[str, dict[str, str]]:
    """The original's ReplicaSets (by owner UID): name -> its annotations of bridge's."""
    uid = w.get("deployment", w.name)["metadata"]["uid"]
    out = {}
    for rs in json.loads(w.k("get", "replicasets", "-o", "json"))["items"]:
        meta = rs["metadata"]
        if any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
            out[meta["name"]] = {k: v for k, v in (meta.get("annotations") or {}).items()
                                 if k.startswith(state.PREFIX)}
    return out


@pytest.mark.only_on("real", why="the Deployment controller copies the lock onto the ReplicaSets: "
                                 "the real controller is the authority")
def test_the_original_is_not_written_during_a_swap_and_its_replicasets_are_cleaned(
        make_workload: Any) -> None:
    w = make_workload()
    b, _port = w.attach(env=FAST)
    proxy = w.assert_swapped()["metadata"]["name"]
    # the Deployment controller copied the lock onto the original's ReplicaSet (as Kubernetes
    # does with every annotation of a Deployment): the restore must take it off again
    wait_until("the lock copied onto the original's ReplicaSet", lambda: any(
        state.SESSION in a for a in our_replicasets(w).values()))
    before = w.get("deployment", w.name)["metadata"]
    first = beat(w, proxy)
    wait_until("several heartbeats", lambda: beat(w, proxy) >= first + 5, every=0.1)
    after = w.get("deployment", w.name)["metadata"]
    assert after["generation"] == before["generation"]
    assert after["annotations"] == before["annotations"]
    assert after["resourceVersion"] == before["resourceVersion"]  # not written at all
    b.signal(signal.SIGTERM)
    assert b.wait() == 0, b.stderr
    w.assert_restored()
    left = {name: keys for name, keys in our_replicasets(w).items() if keys}
    assert left == {}, b.stderr


@pytest.mark.only_on("local", why="the heartbeat is an annotation either API server stores, "
                                  "judged on the laptops' clocks")
def test_a_live_session_is_refused_and_a_killed_one_repaired_whatever_the_clocks(
        make_workload: Any) -> None:
    w = make_workload()
    # alice is on another machine: once she is killed, only her heartbeat tells
    holder, _port = w.attach(env={**FAST, "BRIDGE_OWNER": "alice@laptop", **w.another_laptop()})
    w.assert_swapped()
    # alice's clock runs 5 minutes ahead (her start time), an old bridge's heartbeat time in the
    # lock 5 minutes behind: neither decides anything
    ahead = state.format_time(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    behind = state.format_time(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    w.k("annotate", "--overwrite", f"deployment/{w.name}", f"{state.STARTED_AT}={ahead}",
        f"{state.HEARTBEAT}={behind}")
    code, second = w.run_bridge("swap", w.name, "--", "true",
                                env={"BRIDGE_HEARTBEAT_TTL": "30", "BRIDGE_OWNER": "bob@desk"})
    assert code == 1, second.stderr
    assert ("is locked by alice@laptop" in second.stderr and
            "checking whether that session is alive (up to 30s)" in second.stderr)
    assert "already swapped by alice@laptop" in second.stderr
    code, status = w.run_bridge("status", env={"BRIDGE_HEARTBEAT_TTL": "30"})
    assert code == 0 and "live" in status.stdout, status.stdout + status.stderr

    holder.kill()  # SIGKILL: no restore, the heartbeat stops
    until_the_heartbeat_settles(w, w.proxies()[0]["metadata"]["name"])
    code, status = w.run_bridge("status", env={"BRIDGE_HEARTBEAT_TTL": "2"})
    assert code == 0 and "stale" in status.stdout, status.stdout + status.stderr
    code, third = w.run_bridge("swap", w.name, "--", sys.executable, "-c",
                               "import sys; sys.exit(3)",
                               env={"BRIDGE_HEARTBEAT_TTL": "2", "BRIDGE_OWNER": "bob@desk"})
    assert code == 3, third.stderr
    assert "alice@laptop" in third.stderr and "restoring it first" in third.stderr
    w.assert_restored()
    assert {n: k for n, k in our_replicasets(w).items() if k} == {}
