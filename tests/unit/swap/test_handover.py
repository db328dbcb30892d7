"""The hand-over phase (bridge/swap/handover.py) against fakes of the API and the link: the
wait for Ready stops when the command or the tunnel goes, a dropped tunnel is reconnected, a
command gone during the hand-over keeps the original serving; the hand-over waits for the
command's own listener (not a stray one on the port) and forwards to its address family."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time

import anyio
import pytest

from bridge.errors import BridgeError
from bridge.progress import Progress
from bridge.swap.handover import wait_listening
from tests.unit.support import (
    FakeKube,
    FakeLinker,
    FakeTunnel,
    Rendezvous,
    free_port,
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


LISTEN_ON = ("import socket, sys, time; s = socket.socket(socket.AF_INET6); "
             "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); "
             "s.bind(('::1', int(sys.argv[1]))); s.listen(); print('up', flush=True); "
             "time.sleep(60)")


def test_the_hand_over_waits_for_the_commands_own_listener_not_a_strays() -> None:
    """Issues 21.2 and 19.6: a stray listener on 127.0.0.1:P (here this test process) made the
    old check ("something accepts on 127.0.0.1:P") hand over at once, to the stray. Now only a
    listener of the command's tree counts, and the forward goes to the address it listens on
    (::1 here)."""
    port = free_port()
    stray = socket.socket()
    stray.bind(("127.0.0.1", port))
    stray.listen()
    command = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started: list[subprocess.Popen[str]] = []
    progress = Progress(stream=io.StringIO())

    async def main() -> dict[int, str] | None:
        async with anyio.create_task_group() as tg:
            async def bind_later() -> None:
                await anyio.sleep(0.5)
                started.append(await anyio.to_thread.run_sync(lambda: subprocess.Popen(
                    [sys.executable, "-c", LISTEN_ON, str(port)], stdout=subprocess.PIPE,
                    text=True)))

            tg.start_soon(bind_later)
            t0 = time.monotonic()
            hosts = await wait_listening(
                [port], 10.0, progress, lambda: False,
                lambda: {command.pid, *(p.pid for p in started)})
            assert time.monotonic() - t0 >= 0.5  # not the stray's at once
            return hosts

    try:
        assert anyio.run(main) == {port: "::1"}
    finally:
        stray.close()
        for p in [command, *started]:
            p.kill()
            p.wait(timeout=10)


def test_a_command_that_never_listens_while_a_stray_does_is_refused() -> None:
    port = free_port()
    stray = socket.socket()
    stray.bind(("127.0.0.1", port))
    stray.listen()
    try:
        with pytest.raises(BridgeError) as e:
            anyio.run(lambda: wait_listening([port], 0.5, Progress(stream=io.StringIO()),
                                             lambda: False, lambda: {1}))
        assert f"127.0.0.1:{port}" in str(e.value) and "traffic stays with the cluster" in \
            str(e.value)
    finally:
        stray.close()


def test_waiting_for_the_command_walks_the_process_table_only_once_something_listens(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-over looks every tenth of a second; the walk of every process's descriptors
    (`listeners`, tens of milliseconds) runs only when the kernel's listening table shows
    something on the port, not for the seconds a command takes to start."""
    from bridge.local import ports as localports

    walks: list[float] = []
    real = localports.listeners
    monkeypatch.setattr(localports, "listeners", lambda: walks.append(time.monotonic()) or real())
    port = free_port()
    command = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1); " + LISTEN_ON,
                                str(port)], stdout=subprocess.PIPE, text=True)  # a slow start

    async def main() -> dict[int, str] | None:
        return await wait_listening([port], 10.0, Progress(stream=io.StringIO()),
                                    lambda: False, lambda: {command.pid})

    try:
        t0 = time.monotonic()
        assert anyio.run(main) == {port: "::1"}
        assert command.stdout is not None and command.stdout.readline().strip() == "up"
    finally:
        command.kill()
        command.wait(timeout=10)
    assert walks and len(walks) <= 2, (len(walks), time.monotonic() - t0)


def test_the_services_are_read_beside_the_wait_for_the_proxy_pod() -> None:
    """The Services selecting the proxy are read while its pod is waited for (one round trip
    less once it is Ready): the first pods list and the Services list each wait (bounded)
    until the other is in flight too, so a Services read after the wait fails here."""
    from bridge.swap.handover import READY
    from bridge.swap.link import Link

    meet = Rendezvous(2)

    class AtOnce(FakeKube):
        async def list_pods(self, selector: str | None = None) -> list[dict]:  # type: ignore[type-arg]
            await meet.arrive("pods")
            return await super().list_pods(selector)

        async def list_services(self) -> list[dict]:  # type: ignore[type-arg]
            await meet.arrive("services")
            return await super().list_services()

    kube = AtOnce()
    kube.pods = [ready_pod()]
    link = Link("proxy-pod", None, FakeTunnel())
    h = hand_over(kube, FakeLinker([link]))

    async def main() -> str:
        with anyio.fail_after(10):
            return await h.wait_proxy_ready(link)

    assert anyio.run(main) == READY
    assert sorted(meet.entered[:2]) == ["pods", "services"] and h.services == []
