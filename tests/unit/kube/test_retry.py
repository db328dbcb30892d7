"""Retries of 429/5xx/resets: the pure policy, and `Kube.request` against a small aiohttp server
that answers with the statuses and headers a real API server sends."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from kubernetes.aio import client as kclient

from bridge.kube.client import ApiError, Kube
from bridge.kube.retry import RetryPolicy, call_with_retries, parse_retry_after

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_policy_429_uses_retry_after_bounded() -> None:
    p = RetryPolicy(attempts=3, max_retry_after=10.0)
    assert p.delay(1, 429, 2.0, idempotent=False) == 2.0
    assert p.delay(1, 429, 600.0) == 10.0
    assert p.delay(3, 429, 1.0) is None  # attempts used up


def test_policy_5xx_and_resets_only_when_idempotent() -> None:
    p = RetryPolicy(jitter=0.0, base=0.5, cap=2.0)
    assert p.delay(1, 503, None) == 0.5
    assert p.delay(2, 500, None) == 1.0
    assert p.delay(4, 0, None) == 2.0  # capped
    assert p.delay(1, 503, None, idempotent=False) is None
    assert p.delay(1, 0, None, idempotent=False) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_policy_answers_are_not_retried(status: int) -> None:
    assert RetryPolicy().delay(1, status, 1.0) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == 6.0


class Script:
    """An API server stand-in: each request pops the next (status, headers) answer; an empty
    status 0 answer drops the connection without a response."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        self.answers = answers
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.method)
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        if status == 0:
            assert request.transport is not None
            request.transport.abort()  # a connection reset
            raise web.HTTPInternalServerError()  # never delivered
        if status == 200:
            return web.json_response({"kind": "Deployment", "metadata": {"name": "hello"}})
        return web.json_response({"kind": "Status", "status": "Failure", "code": status,
                                  "reason": "TooManyRequests" if status == 429 else "Internal",
                                  "message": f"answer {status}"},
                                 status=status, headers=headers)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Any]]:
    runners: list[web.AppRunner] = []
    kubes: list[Kube] = []

    async def start(script: Script) -> Kube:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", script.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        runners.append(runner)
        config = kclient.Configuration(host=f"http://127.0.0.1:{sock.getsockname()[1]}")
        config.api_key["BearerToken"] = "Bearer t"
        kube = Kube(kclient.ApiClient(config), "ns", "ctx", config.host,
                    retry_policy=RetryPolicy(attempts=4))
        kubes.append(kube)
        return kube

    yield start
    for k in kubes:
        await k.close()
    for r in runners:
        await r.cleanup()


async def test_kube_request_retries_429_with_retry_after_then_succeeds(serve: Any) -> None:
    script = Script([(429, {"Retry-After": "0"}), (429, {"Retry-After": "0"})])
    kube = await serve(script)
    dep = await kube.get_deployment("hello")
    assert dep["metadata"]["name"] == "hello"
    assert script.seen == ["GET", "GET", "GET"]


async def test_kube_request_retries_503_and_reset_for_get(serve: Any) -> None:
    script = Script([(503, {"Retry-After": "0"}), (0, {})])
    kube = await serve(script)
    assert (await kube.get_deployment("hello"))["metadata"]["name"] == "hello"
    assert len(script.seen) == 3


async def test_kube_request_post_not_retried_on_5xx_but_on_429(serve: Any) -> None:
    script = Script([(500, {})])
    kube = await serve(script)
    with pytest.raises(ApiError) as info:
        await kube.create_deployment({"metadata": {"name": "x"}})
    assert info.value.status == 500
    assert script.seen == ["POST"]
    script.answers = [(429, {"Retry-After": "0"})]
    await kube.create_deployment({"metadata": {"name": "x"}})
    assert script.seen == ["POST", "POST", "POST"]


async def test_kube_request_gives_up_after_the_bound(serve: Any) -> None:
    script = Script([(429, {"Retry-After": "0"})] * 10)
    kube = await serve(script)
    with pytest.raises(ApiError) as info:
        await kube.get_deployment("hello")
    assert info.value.status == 429
    assert len(script.seen) == 4


async def test_retry_waits_what_the_server_asked() -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ApiError("busy", 429, retry_after=7.0)
        return "ok"

    assert await call_with_retries(flaky, sleep=record) == "ok"
    assert waits == [7.0, 7.0]



async def test_tls_failure_is_not_retried() -> None:
    """A server that does not speak TLS: one connection, one clear error, no back-off."""
    import asyncio

    from bridge.kube.client import Unreachable

    connections = 0

    async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_tls, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = kclient.Configuration(host=f"https://127.0.0.1:{port}")
    kube = Kube(kclient.ApiClient(config), "ns", "ctx", config.host)
    try:
        with pytest.raises(Unreachable, match="TLS"):
            await kube.get_deployment("hello")
    finally:
        await kube.close()
        server.close()
    assert connections == 1


async def test_kube_request_patch_not_retried_on_reset(serve: Any) -> None:
    """A conditional PATCH that may have applied is not sent again (it would come back 409)."""
    script = Script([(0, {})])
    kube = await serve(script)
    with pytest.raises(ApiError) as info:
        await kube.patch_deployment("hello", {"metadata": {"resourceVersion": "7"}})
    assert info.value.status == 0
    assert script.seen == ["PATCH"]
