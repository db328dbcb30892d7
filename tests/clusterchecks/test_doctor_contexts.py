"""`bridge doctor` and the port-forward's permission check against the local test cluster's
admin, restricted (get/list/watch only) and least-privilege (the README's Role) contexts, and the
cluster answering `kubectl auth can-i` as it answers bridge."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.equipment.localcluster.kubeconfig import CONTEXT_ADMIN, CONTEXT_LEAST, CONTEXT_RESTRICTED

pytestmark = pytest.mark.cluster


def run_doctor(cluster: Any, context: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    return subprocess.run([sys.executable, "-m", "bridge.cli", "--context", context, "doctor",
                           *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_doctor_with_the_restricted_context(cluster: Any, kubectl: Any) -> None:
    result = run_doctor(cluster, CONTEXT_RESTRICTED)
    assert result.returncode == 1, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("cluster: Kubernetes v1.")
    missing = {line.split(" in namespace")[0] for line in out if line.startswith("missing:")}
    assert missing == {"missing: create deployments.apps", "missing: patch deployments.apps",
                       "missing: delete deployments.apps",
                       "missing: create pods/portforward"}
    # the test cluster answers as kubectl sees it
    can = kubectl.run("--context", CONTEXT_RESTRICTED, "auth", "can-i", "create",
                      "pods/portforward", check=False)
    assert can.stdout.strip() == "no"
    can = kubectl.run("--context", CONTEXT_RESTRICTED, "auth", "can-i", "get",
                      "pods/portforward", check=False)
    assert can.stdout.strip() == "yes"


def test_doctor_with_the_admin_context(cluster: Any) -> None:
    result = run_doctor(cluster, CONTEXT_ADMIN, "no-such-deployment")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert not [line for line in out if "missing" in line]
    assert any(line.startswith("permissions: all ") for line in out)
    assert any(line.startswith("target: ") and "no-such-deployment" in line for line in out)


def test_websocket_port_forward_needs_create_as_on_1_35(cluster: Any) -> None:
    """The restricted user may `get` pods/portforward but not `create`: the websocket upgrade
    (a GET) is refused, as on Kubernetes 1.35+, with bridge's one-line wording."""
    import anyio

    from bridge.errors import BridgeError
    from bridge.kube.client import Kube
    from bridge.transport.portforward import PortForwarder

    async def main() -> str:
        kube = await Kube.connect(cluster.kubeconfig, CONTEXT_RESTRICTED)
        async with kube, PortForwarder(kube.api_client, "default", "any-pod") as forwarder:
            with pytest.raises(BridgeError) as info:
                await forwarder.open(80)
            return str(info.value)

    message = anyio.run(main)
    assert "forbidden: you may not port-forward to pods in namespace default" in message
    assert "create on pods/portforward" in message


def test_doctor_with_the_least_privilege_context(cluster: Any) -> None:
    result = run_doctor(cluster, CONTEXT_LEAST)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert not [line for line in out if "missing" in line], out
    assert any(line.startswith("permissions: all ") for line in out)
