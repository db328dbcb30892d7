"""The user's own sessions on this machine (issue 21.8): a second swap names the bridge that
holds the Deployment here at once, `status` says it is this user's, and a stale session comes
with the exact command that repairs it."""

from __future__ import annotations

import shlex
import signal
from typing import Any

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.e2e,
              pytest.mark.only_on("local", why="this machine's records of its sessions and what "
                                               "bridge says of them; the cluster only stores the "
                                               "lock")]


def test_a_second_swap_here_names_the_users_own_bridge_and_status_the_repair(
        make_workload: Any) -> None:
    w = make_workload()
    first, _port = w.attach()  # this user, this machine
    w.assert_swapped()
    before = w.get("deployment", "hello")["metadata"]["annotations"]
    # a TTL of 60 s: were the session watched, this swap would wait for a minute
    env = {"BRIDGE_HEARTBEAT_TTL": "60"}
    code, second = w.run_bridge("swap", "hello", "--", "true", env=env)
    assert code == 1, second.stderr
    errors = [ln for ln in second.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, second.stderr
    assert errors[0].startswith(
        f"bridge: error: you are already swapping deployment/hello in another bridge "
        f"(pid {first.proc.pid}, "), errors[0]
    assert errors[0].endswith("nothing was changed"), errors[0]
    assert "checking whether that session is alive" not in second.stderr
    assert "ask them" not in second.stderr
    assert w.get("deployment", "hello")["metadata"]["annotations"] == before

    code, status = w.run_bridge("status", env=env)
    assert code == 0, status.stderr
    assert f"your bridge here (pid {first.proc.pid}" in status.stdout, status.stdout
    assert "checking whether" not in status.stderr and "repair it with" not in status.stderr

    # killed: the session is stale, and status says how to repair it, exactly
    first.kill()
    code, status = w.run_bridge("status", env=env)
    assert code == 0 and "stale" in status.stdout, status.stdout + status.stderr
    lines = [ln for ln in status.stderr.splitlines() if "repair it with: " in ln]
    assert lines == [f"deployment/hello: its session is stale; repair it with: bridge restore "
                     f"hello -n {w.namespace} --kubeconfig {shlex.quote(w.kubeconfig)}"]
    command = shlex.split(lines[0].partition("repair it with: ")[2])
    code, restored = w.run_bridge(*command[1:])  # (the harness passes --kubeconfig and -n too)
    assert code == 0, restored.stderr
    w.assert_restored()
    assert first.proc.returncode == -signal.SIGKILL
