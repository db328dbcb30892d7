"""A service that itself listens on the sidecar's default ports (8022 SSH, 8023 readiness):
the proxy's sidecar moves to free ports, and the swap still carries traffic both ways."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from sidecar import protocol

from .support import LOCAL_SERVER, free_port, http_get, until_laptop_answers

pytestmark = [pytest.mark.cluster, pytest.mark.e2e,
              pytest.mark.only_on("local", why="the sidecar's ports are bridge's plan from the "
                                               "pod spec; a pod has a network namespace of its "
                                               "own on both clusters")]


def test_app_on_the_sidecars_default_ports(make_workload: Any) -> None:
    ssh, health = protocol.DEFAULT_SSH_PORT, protocol.DEFAULT_HEALTH_PORT
    w = make_workload(ports=[{"name": "http", "containerPort": ssh}, {"containerPort": health}],
                      service_ports=[{"name": "http", "port": 80, "targetPort": "http"},
                                     {"name": "other", "port": 81, "targetPort": health}])
    ip = w.service_ip()
    local_a, local_b = free_port(), free_port()
    b = w.bridge("swap", "hello", "--port", f"{ssh}:{local_a}", "--port", f"{health}:{local_b}",
                 "--", sys.executable, "-c", LOCAL_SERVER, str(local_a), str(local_b))
    b.wait_for("swapped: ")
    proxy = w.assert_swapped()
    sidecar = proxy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env[protocol.ENV_SSH_PORT] not in (str(ssh), str(health))
    assert env[protocol.ENV_HEALTH_PORT] not in (str(ssh), str(health))
    until_laptop_answers(ip, 80, f"laptop {local_a}\n")
    until_laptop_answers(ip, 81, f"laptop {local_b}\n")
    assert http_get(ip, 80) == f"laptop {local_a}\n"
    assert http_get(ip, 81) == f"laptop {local_b}\n"
    assert http_get(ip, 80, "/exit/0") == f"laptop {local_a}\n"
    assert b.wait() == 0
    assert http_get(ip, 80).startswith("cluster ")
