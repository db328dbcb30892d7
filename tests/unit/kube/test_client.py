"""The API edge's errors (bridge.kube.client): an API server that cannot be reached at all is
said at once, in one line naming the server and the context; a connection refused after the
server has answered is a blip, retried."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes.aio import client as kclient

from bridge.kube.client import Kube, Unreachable, never_connected
from bridge.kube.retry import RetryPolicy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def _kube(host: str, policy: RetryPolicy | None = None) -> tuple[Kube, list[str]]:
    config = kclient.Configuration(host=host)
    kube = Kube(kclient.ApiClient(config), "ns", "staging", config.host,
                **({"retry_policy": policy} if policy else {}))
    attempts: list[str] = []
    once = kube._request_once

    async def counting(method: str, path: str, **kw: Any) -> Any:
        attempts.append(path)
        return await once(method, path, **kw)

    kube._request_once = counting  # type: ignore[method-assign]
    return kube, attempts


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The retry layer's waits, recorded instead of slept."""
    import bridge.kube.retry as retry

    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setitem(retry.call_with_retries.__kwdefaults__, "sleep", record)
    yield waits


async def test_a_refused_connection_is_unreachable_at_once(no_sleep: list[float]) -> None:
    port = _closed_port()
    kube, attempts = _kube(f"https://127.0.0.1:{port}")
    try:
        with pytest.raises(Unreachable) as info:
            await kube.get_deployment("hello")
    finally:
        await kube.close()
    assert str(info.value) == (
        f"cannot reach the Kubernetes API at https://127.0.0.1:{port} (context staging): "
        "connection refused: nothing listens there (is the cluster running, is the "
        "kubeconfig's server right?)")
    assert info.value.permanent and info.value.status == 0
    assert (len(attempts), no_sleep) == (1, [])  # one connection attempt, no back-off


async def test_a_name_that_does_not_resolve_is_unreachable_at_once(
        monkeypatch: pytest.MonkeyPatch, no_sleep: list[float]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        if host == "api.bridge-test.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    kube, attempts = _kube("https://api.bridge-test.invalid:6443")
    try:
        with pytest.raises(Unreachable) as info:
            await kube.list_deployments()
    finally:
        await kube.close()
    assert str(info.value) == (
        "cannot reach the Kubernetes API at https://api.bridge-test.invalid:6443 (context "
        "staging): its name does not resolve (Name or service not known; is the kubeconfig's "
        "server right?)")
    assert (len(attempts), no_sleep) == (1, [])


async def test_refused_after_an_answer_is_retried(no_sleep: list[float]) -> None:
    """Mid-session the API server may restart: a refused connection then is retried."""
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Deployment", "metadata": {"name": "hello"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    kube, attempts = _kube(f"http://127.0.0.1:{sock.getsockname()[1]}",
                           RetryPolicy(attempts=3))
    try:
        assert (await kube.get_deployment("hello"))["metadata"]["name"] == "hello"
        await runner.cleanup()  # the server goes away: connections are refused now
        with pytest.raises(Unreachable) as info:
            await kube.get_deployment("hello")
    finally:
        await kube.close()
    assert not info.value.permanent
    assert len(attempts) == 1 + 3 and len(no_sleep) == 2


def test_only_refusals_and_names_count_as_never_connected() -> None:
    assert never_connected(ConnectionResetError(104, "reset")) is None
    assert never_connected(TimeoutError()) is None


async def test_reads_sent_at_once_count_one_serial_round_trip() -> None:
    """`Kube.serial` (the swap's profile) counts a request only when no other was waiting for
    its answer as it went out: two reads sent at once are one round trip, the next one more.
    The server answers the first two only once both arrived, so they did overlap."""
    import anyio

    both = anyio.Event()
    arrived: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        arrived.append(request.path)
        if len(arrived) == 2:
            both.set()
        if len(arrived) <= 2:
            with anyio.fail_after(10):  # a bound, not a timing: both come at once
                await both.wait()
        return web.json_response({"items": [], "metadata": {"name": "x"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    kube, _ = _kube(f"http://127.0.0.1:{sock.getsockname()[1]}")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(kube.get_deployment, "hello")
            tg.start_soon(kube.list_services)
        assert (kube.requests, kube.serial) == (2, 1)
        await kube.list_limit_ranges()
        assert (kube.requests, kube.serial) == (3, 2)
    finally:
        await kube.close()
        await runner.cleanup()
