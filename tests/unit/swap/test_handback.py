"""The hand-back (bridge/swap/handback.py): the command is stopped only once the data path is
quiet. The EndpointSlices say when the API server dropped the proxy; a node's kube-proxy may
route to it a while longer, and a connection that still comes through the tunnel says so."""

from __future__ import annotations

import datetime as dt
import io
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from bridge.model import state
from bridge.progress import Progress
from bridge.swap import handback
from bridge.swap.lease import Lease
from tests.unit.support import (
    FakeKube,
    FakeLinker,
    FakeTunnel,
    locked,
    ready_pod,
)

PROXY_IP, ORIGINAL_IP = "10.0.0.9", "10.0.0.1"


@dataclass
class Tunnel:
    last_forwarded: float = 0.0
    withdrawn: bool = False


@dataclass
class Link:
    tunnel: Tunnel = field(default_factory=Tunnel)


@dataclass
class Linker:
    current: Link = field(default_factory=Link)

    async def withdraw(self) -> bool:
        self.current.tunnel.withdrawn = True
        return True


def test_settled_once_the_proxy_left_settle_ago_and_no_connection_came_for_quiet() -> None:
    settle, quiet = handback.SETTLE, handback.QUIET
    assert handback.settle_left(now=100.0, out_at=100.0, last_forwarded=0.0) == settle
    assert handback.settle_left(now=100.0 + settle, out_at=100.0, last_forwarded=0.0) == 0
    # a connection came after the proxy left the endpoints: quiet counts from it
    assert handback.settle_left(now=100.0 + settle, out_at=100.0,
                                last_forwarded=100.0 + settle) == quiet


class Kube(FakeKube):
    """FakeKube whose pods honour an equality label selector (`k=v,...`)."""

    async def list_pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        pods = await super().list_pods(selector)
        wanted = dict(term.split("=", 1) for term in (selector or "").split(",") if term)
        return [p for p in pods
                if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]


def swapped_hello(kube: FakeKube) -> state.Lock:
    lk = state.Lock(session="abcd", owner="me@here", replicas=1, proxy="hello-bridge",
                    ports="8080", started_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    kube.add("hello", 0, state.encode(lk))
    kube.deployments["hello"]["status"]["readyReplicas"] = 1
    kube.pods = [
        {"metadata": {"name": "proxy", "labels": {"app": "hello", state.SESSION_LABEL: "abcd"}},
         "status": {"podIP": PROXY_IP, "conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "orig", "labels": {"app": "hello"}},
         "status": {"podIP": ORIGINAL_IP, "conditions": [{"type": "Ready", "status": "True"}]}}]
    kube.services = [{"metadata": {"name": "hello"}, "spec": {"selector": {"app": "hello"}}}]
    kube.endpoints["hello"] = {"subsets": [{"addresses": [{"ip": PROXY_IP},
                                                          {"ip": ORIGINAL_IP}]}]}
    return lk


def test_the_command_is_stopped_only_once_no_node_routes_to_the_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy leaves the endpoints at once, but connections keep coming through the tunnel
    for 0.6 s more (a slow kube-proxy): the hand-back ends QUIET after the last of them, not
    SETTLE after the endpoints changed (which lost a request on the real cluster)."""
    monkeypatch.setattr(handback, "SETTLE", 0.2)
    monkeypatch.setattr(handback, "QUIET", 0.3)
    kube = Kube()
    lk = swapped_hello(kube)
    linker = Linker()
    tunnel = linker.current.tunnel
    events: dict[str, float] = {}

    async def cluster() -> None:
        while not tunnel.withdrawn:  # noqa: ASYNC110 - polls the fake's flag
            await anyio.sleep(0.01)
        kube.endpoints["hello"] = {"subsets": [{"addresses": [{"ip": ORIGINAL_IP}]}]}
        events["out"] = time.monotonic()
        while time.monotonic() < events["out"] + 0.6:  # a node still routes to the proxy
            tunnel.last_forwarded = time.monotonic()
            await anyio.sleep(0.05)
        events["last connection"] = tunnel.last_forwarded

    async def main() -> None:
        progress = Progress(stream=io.StringIO())
        manifest: dict[str, Any] = {"spec": {"template": {"metadata": {"labels":
                                                                       {"app": "hello"}}}}}
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster)
            with anyio.fail_after(10):
                await handback.hand_back(kube, Lease(kube, "hello", lk, progress),  # type: ignore[arg-type]
                                         linker, manifest, progress, 5.0)  # type: ignore[arg-type]
            events["stopped"] = time.monotonic()

    anyio.run(main)
    assert events["stopped"] >= events["last connection"] + 0.3 - 0.02, events
    assert events["stopped"] >= events["out"] + 0.2


def test_a_data_path_that_never_quiets_is_bounded() -> None:
    out = io.StringIO()

    async def main() -> float:
        started = time.monotonic()
        await handback.wait_quiet(time.monotonic, Progress(stream=out), 0.5)  # always busy
        return time.monotonic() - started

    took = anyio.run(main)
    assert 0.5 <= took < 2.0
    assert "connections still reached the proxy pod 0.5s after it left" in out.getvalue()


# -- moved here from the old test_session.py

def test_hand_back_brings_the_original_back_before_withdrawing_the_proxy() -> None:
    """Both serve for a moment: the original is scaled up and Ready first, then the sidecar is
    told to fail its readiness, then bridge waits for the proxy to leave the endpoints."""
    from bridge.swap import handback
    from bridge.swap.lease import Lease
    from bridge.swap.link import Link

    kube = FakeKube()
    lk = locked(kube)
    kube.deployments["hello"]["spec"]["replicas"] = 0  # swapped
    log: list[str] = []
    kube.on_patch = lambda name, patch: log.append(f"patch {patch.get('spec')}")
    kube.pods = [ready_pod()]
    kube.services = [{"metadata": {"name": "hello"}, "spec": {"selector": {"app": "hello"}}}]
    kube.endpoints["hello"] = {"subsets": [{"addresses": [{"ip": "10.0.0.9"}]}]}
    tunnel = FakeTunnel()
    linker = FakeLinker([Link("proxy-pod", None, tunnel)], log)

    async def proxy_leaves() -> None:  # the endpoints controller, once the pod is not Ready
        while not tunnel.withdrawn:  # noqa: ASYNC110 - polls the fake's flag
            await anyio.sleep(0.01)
        log.append("proxy out of the endpoints")
        kube.endpoints["hello"] = {"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]}

    async def main() -> None:
        progress = Progress(stream=io.StringIO())
        async with anyio.create_task_group() as tg:
            tg.start_soon(proxy_leaves)
            manifest = {"spec": {"template": {"metadata": {"labels": {"app": "hello"}}}}}
            with anyio.fail_after(20):
                await handback.hand_back(kube, Lease(kube, "hello", lk, progress),
                                         linker, manifest, progress, 10.0)  # type: ignore[arg-type]
        log.append("hand-back done")

    anyio.run(main)
    assert log == ["patch {'replicas': 2}", "withdraw", "proxy out of the endpoints",
                   "hand-back done"]
