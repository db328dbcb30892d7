"""The hand-back phase (bridge/swap/handback.py): the original back before the proxy goes."""

from __future__ import annotations

import io

import anyio

from bridge.progress import Progress
from tests.unit.support import (
    FakeKube,
    FakeLinker,
    FakeTunnel,
    locked,
    ready_pod,
)


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
