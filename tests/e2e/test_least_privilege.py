"""A whole swap by a user that has only the README's Role (the test cluster's `bridge-user`):
traffic reaches the laptop, and everything is put back (the workload fixture checks that)."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.equipment.localcluster.kubeconfig import CONTEXT_LEAST

from .support import free_port, http_get, until_laptop_answers

pytestmark = [pytest.mark.cluster, pytest.mark.e2e,
              pytest.mark.only_on("real", why="least-privilege RBAC: the real API server's "
                                              "authorizer is the authority (the local test "
                                              "cluster imitates the Role)")]


def test_swap_with_only_the_readme_role(make_workload: Any) -> None:
    w = make_workload()
    port = free_port()
    w.local_server(port)
    b = w.bridge("--context", CONTEXT_LEAST, "swap", "hello", "--port", f"http:{port}")
    b.wait_for("attached")
    until_laptop_answers(w.service_ip(), 80, f"laptop {port}\n")
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr
    assert "forbidden" not in b.stderr and "warning" not in b.stderr.lower(), b.stderr
    assert http_get(w.service_ip(), 80).startswith("cluster ")
