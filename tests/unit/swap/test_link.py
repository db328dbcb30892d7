"""The link's choice of pod (issue 19): on a reconnect it keeps to the pod it was connected to
while that pod lives, never "the newest" proven pod; the admission note is said with a
refusal."""

from __future__ import annotations

import io
from typing import Any

import anyio

from bridge.model import state, trust
from bridge.progress import Progress
from bridge.swap.link import Linker, LinkSpec
from tests.unit.support import FakeKube, api_error

HOST_KEY = "ssh-ed25519 " + "A" * 68
SPEC = {"containers": [{"name": "web", "image": "sidecar:1"}]}
RS_REF = {"kind": "ReplicaSet", "name": "proxy-rs", "uid": "rs-uid", "controller": True}


class Kube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.rs = {"metadata": {"name": "proxy-rs", "uid": "rs-uid", "ownerReferences": [
            {"kind": "Deployment", "uid": "dep-uid", "controller": True}]}}

    async def get_replicaset(self, name: str) -> dict[str, Any]:
        if name != "proxy-rs":
            raise api_error(404, "not found")
        return self.rs

    async def pod_log(self, name: str, container: str | None = None, *,
                      tail_lines: int | None = None, limit_bytes: int | None = None) -> str:
        return f"host-key: {HOST_KEY}\n"


def pod(name: str, uid: str, created: str, spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "creationTimestamp": created,
                         "labels": {state.SESSION_LABEL: "abcd"}, "ownerReferences": [RS_REF]},
            "spec": spec, "status": {"phase": "Running", "containerStatuses": [
                {"name": "web", "state": {"running": {"startedAt": created}}}]}}


def linker(kube: Kube, out: io.StringIO, **kw: Any) -> Linker:
    async def ours() -> None:
        pass

    return Linker(kube, lambda p: None, LinkSpec("abcd", "web", 8022, None, [],
                                                 planned_spec=SPEC, proxy="p"),
                  Progress(stream=out), ours, proxy_uid="dep-uid", **kw)


def test_a_reconnect_keeps_to_the_pod_in_use_while_it_lives() -> None:
    kube = Kube()
    first = pod("proxy-a", "uid-a", "2026-01-01T00:00:01Z")
    newer = pod("proxy-b", "uid-b", "2026-01-01T00:00:09Z")  # proven too, and newer
    kube.pods = [first]
    link = linker(kube, io.StringIO())

    async def main() -> None:
        assert (await link.wait_pod(first=True))[0] == "proxy-a"
        link.pod_uid = link._chosen_uid  # what connect() records once the tunnel is up
        kube.pods = [first, newer]
        assert (await link.wait_pod(first=False))[0] == "proxy-a"
        kube.pods = [newer]  # the pod in use is gone: the next proven one
        assert (await link.wait_pod(first=False))[0] == "proxy-b"

    anyio.run(main)


def test_a_refusal_says_why_admissions_additions_were_not_accepted() -> None:
    kube = Kube()
    meshed = {"containers": SPEC["containers"] + [{"name": "mesh-proxy", "image": "m:1"}]}
    kube.pods = [pod("proxy-a", "uid-a", "2026-01-01T00:00:01Z", meshed),
                 pod("proxy-b", "uid-b", "2026-01-01T00:00:02Z")]
    out = io.StringIO()
    link = linker(kube, out, admitted=trust.NOTHING_ADMITTED,
                  admitted_note="the pods of deployment/hello differ in what admission added")

    async def main() -> None:
        assert (await link.wait_pod(first=False))[0] == "proxy-b"

    anyio.run(main)
    assert "ignoring pod proxy-a" in out.getvalue()
    assert "mesh-proxy" in out.getvalue() and "differ in what admission added" in out.getvalue()


def test_the_start_ends_at_once_when_the_proxys_only_pod_is_refused() -> None:
    """Issue 19: a mesh's additions the original's pods do not carry made bridge wait for its
    own pod until the timeout; the pod cannot change, so the start fails at once, saying why."""
    import pytest

    from bridge.errors import BridgeError

    kube = Kube()
    meshed = {"containers": SPEC["containers"] + [{"name": "mesh-proxy", "image": "m:1"}]}
    kube.pods = [pod("proxy-a", "uid-a", "2026-01-01T00:00:01Z", meshed)]
    link = linker(kube, io.StringIO(),
                  admitted_note="deployment/hello has no running pod to compare with")

    async def main() -> None:
        with anyio.fail_after(5):
            await link.wait_pod(first=True)

    with pytest.raises(BridgeError) as e:
        anyio.run(main)
    assert "mesh-proxy" in str(e.value) and "no running pod" in str(e.value)
    assert "\n" not in str(e.value)
