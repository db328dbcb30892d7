"""The hand-over phase (bridge/swap/handover.py) against fakes of the API and the link: the
wait for Ready stops when the command or the tunnel goes, a dropped tunnel is reconnected, a
command gone during the hand-over keeps the original serving."""

from __future__ import annotations

import anyio
import pytest

from bridge.errors import BridgeError
from tests.unit.support import (
    FakeKube,
    FakeLinker,
    FakeTunnel,
    hand_over,
    ready_pod,
)


def test_waiting_for_the_proxy_to_be_ready_stops_when_the_command_exits() -> None:
    from bridge.swap.handover import STOPPED
    from bridge.swap.link import Link

    kube = FakeKube()
    kube.pods = [ready_pod(ready=False)]
    h = hand_over(kube, FakeLinker([Link("proxy-pod", None, FakeTunnel())]), stop=lambda: True)

    async def main() -> str:
        with anyio.fail_after(10):
            return await h.wait_proxy_ready(Link("proxy-pod", None, FakeTunnel()))

    assert anyio.run(main) == STOPPED


def test_waiting_for_the_proxy_to_be_ready_stops_when_the_tunnel_closes() -> None:
    from bridge.swap.handover import TUNNEL_CLOSED
    from bridge.swap.link import Link

    kube = FakeKube()
    kube.pods = [ready_pod(ready=False)]
    h = hand_over(kube, FakeLinker([Link("proxy-pod", None, FakeTunnel())]))

    async def main() -> str:
        with anyio.fail_after(10):
            return await h.wait_proxy_ready(Link("proxy-pod", None, FakeTunnel(closed=True)))

    assert anyio.run(main) == TUNNEL_CLOSED


def test_a_tunnel_lost_while_waiting_for_ready_is_reconnected_with_patience() -> None:
    """The tunnel drops after the forwards, while the proxy turns Ready: bridge reconnects,
    forwards again waiting for the sidecar to release the old ports, waits for Ready on the new
    link, then scales the original to zero."""
    from bridge.swap.link import FORWARD_PATIENCE, Link

    kube = FakeKube()
    kube.pods = [ready_pod()]
    first, second = Link("proxy-pod", None, FakeTunnel()), Link("proxy-pod", None, FakeTunnel())
    linker = FakeLinker([first, second])
    linker.close_after_forward.add(id(first))
    h = hand_over(kube, linker)
    assert anyio.run(h.run) is True
    assert linker.forwards == [(first, 0.0), (second, FORWARD_PATIENCE)]
    assert kube.deployments["hello"]["spec"]["replicas"] == 0


def test_a_tunnel_that_keeps_dropping_during_the_hand_over_fails_clearly() -> None:
    from bridge.swap.handover import HAND_OVER_ATTEMPTS
    from bridge.swap.link import Link

    kube = FakeKube()
    kube.pods = [ready_pod(ready=False)]
    links = [Link("proxy-pod", None, FakeTunnel()) for _ in range(HAND_OVER_ATTEMPTS)]
    linker = FakeLinker(links)
    linker.close_after_forward.update(id(link) for link in links)
    h = hand_over(kube, linker)
    with pytest.raises(BridgeError, match="dropped 3 times during the hand-over"):
        anyio.run(h.run)
    assert linker.reconnects == HAND_OVER_ATTEMPTS - 1
    assert kube.deployments["hello"]["spec"]["replicas"] == 2  # the original never left


def test_a_command_gone_during_the_hand_over_keeps_the_original_serving() -> None:
    from bridge.swap.link import Link

    kube = FakeKube()
    kube.pods = [ready_pod()]
    h = hand_over(kube, FakeLinker([Link("proxy-pod", None, FakeTunnel())]), stop=lambda: True)
    assert anyio.run(h.run) is False
    assert kube.deployments["hello"]["spec"]["replicas"] == 2
