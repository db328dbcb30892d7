"""Controllers that fight a swap, end to end on the test cluster: a GitOps-tracked Deployment is
named before anything changes, and someone scaling the original back up during the session is
noticed (once) while the session goes on and restores cleanly."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from .support import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.e2e,
              pytest.mark.only_on("local", why="no Argo CD runs on either cluster: the test "
                                               "writes the tracking annotation and scales by "
                                               "hand; checked is bridge's reading of the "
                                               "annotation and its watch of the original")]


def test_argo_tracked_deployment_is_named_and_drift_warned_once(make_workload: Any) -> None:
    w = make_workload()
    w.k("annotate", "deployment/hello",
        "argocd.argoproj.io/tracking-id=shop:apps/Deployment:ns/hello")
    port = free_port()
    w.local_server(port)
    b = w.bridge("swap", "hello", "--port", f"http:{port}",
                 env={"BRIDGE_HEARTBEAT_INTERVAL": "0.5"})
    b.wait_for("attached")
    assert "managed by Argo CD application shop" in b.stderr
    assert "argocd app set shop --sync-policy none" in b.stderr
    w.k("scale", "deployment/hello", "--replicas=1")  # what self-heal would do
    b.wait_for("was scaled to 1 during the session")
    assert "likely Argo CD" in b.stderr
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr
    assert b.stderr.count("during the session") == 1
    w.k("annotate", "deployment/hello", "argocd.argoproj.io/tracking-id-")
