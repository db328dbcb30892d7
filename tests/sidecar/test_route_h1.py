"""The HTTP/1.1 router (sidecar/route_h1.py), driven by real clients on loopback.

Two upstream servers (aiohttp, a real HTTP/1.1 server with WebSocket support) answer who
served them ("laptop" / "origin"); the router sits in front with the header rule
`x-dev=alice` (sidecar.headerrules): a request carrying it goes to "laptop", every other to
"origin". Clients: curl (several URLs in one invocation share one keep-alive connection),
raw sockets (pipelining, malformed requests, a client that never stops sending),
websocket-client. Every test asserts which upstream answered, so a wrong route fails it.
A few more upstreams misbehave on purpose: one refuses connections, one closes before its
answer, one closes mid-answer, one never reads.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import h11
import pytest
import websocket
from aiohttp import web

from sidecar import headerrules, route_h1

RULES = headerrules.parse_rules(["x-dev=alice"])
CURL = ["curl", "--silent", "--show-error", "--max-time", "20", "--noproxy", "*"]


# ---------------------------------------------------------------- the rig


def _upstream_app(name: str) -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(f"{name}: {msg.data}")
        return sock

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            return await ws(request)
        if request.path.startswith("/slow"):
            await asyncio.sleep(0.3)
        body = await request.read()
        first = (f"{name} {request.method} {request.path_qs} "
                 f"te={request.headers.get('Transfer-Encoding', '-')} "
                 f"dev={','.join(request.headers.getall('x-dev', [])) or '-'} "
                 f"len={len(body)}\n").encode()
        if request.method != "POST":
            return web.Response(body=first, headers={"X-Served-By": name})
        # an echo, chunked: several writes of a body whose length is not said up front
        resp = web.StreamResponse(headers={"X-Served-By": name})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(first)
        for i in range(0, len(body), 7000):
            await resp.write(body[i:i + 7000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request head, then closes without answering."""
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers a head promising 1000 bytes, sends 10, closes."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    await writer.drain()
    writer.close()


async def _garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers a chunked head, one good chunk and a broken chunk header, in one write."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"a\r\n0123456789\r\nZZZ\r\n")
    await writer.drain()
    await asyncio.sleep(3600)


async def _stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and never reads (a laptop stopped at a breakpoint)."""
    await asyncio.sleep(3600)


class Rig:
    """Upstreams and the router, on an event loop of their own in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ports: dict[str, int] = {}
        self.routed: list[str] = []  # every decision, in order
        self.accepted = 0  # client connections the router accepted
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._cleanup: list[Any] = []
        self.call(self._start())

    def call(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def route(self, request: h11.Request) -> str:
        forced = [v.decode() for n, v in request.headers if n == b"x-target"]
        target = forced[0] if forced else self.by_rules(request)
        self.routed.append(target)
        return target

    async def connect(self, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.ports[target])

    async def _start(self) -> None:
        self.by_rules = route_h1.by_header_rules(RULES, "laptop", "origin")
        for name in ("laptop", "origin"):
            runner = web.AppRunner(_upstream_app(name), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.ports[name] = runner.addresses[0][1]
            self._cleanup.append(runner)
        for name, handler in (("silent", _silent), ("cut", _cut), ("garbled", _garbled),
                              ("stall", _stall)):
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            self.ports[name] = server.sockets[0].getsockname()[1]
            self._cleanup.append(server)
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            self.ports["refused"] = s.getsockname()[1]

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            await route_h1.serve(reader, writer, self.route, self.connect)

        router = await asyncio.start_server(accepted, "127.0.0.1", 0)
        self.ports["router"] = router.sockets[0].getsockname()[1]
        self._cleanup.append(router)

    async def _stop(self) -> None:
        for thing in reversed(self._cleanup):
            if isinstance(thing, web.AppRunner):
                await thing.cleanup()
            else:
                thing.close()
        # what is still open (the stalled upload's relay) ends on cancellation, and cleanly
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        done, pending = await asyncio.wait(others, timeout=5) if others else (set(), set())
        assert not pending

    def stop(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['router']}"


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.stop()


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CURL, *args], capture_output=True, text=True, errors="replace",
                          timeout=30)


def _answers(stdout: str) -> list[tuple[str, str]]:
    """(body, what --write-out WRITE_OUT said) for each URL of one curl run."""
    return re.findall(r"(.*?)<<(.*?)>>\n", stdout, re.S)


def _write_out(*variables: str) -> list[str]:
    # (not starting with "@": curl reads --write-out @FILE from a file)
    return ["--write-out", "<<" + "|".join("%{" + v + "}" for v in variables) + ">>\n"]


def _raw(port: int, data: bytes, *, responses: int, timeout: float = 10) -> list[tuple[
        h11.Response, bytes]]:
    """Sends `data` in one write, reads `responses` answers (parsed by h11 as a client)."""
    conn = h11.Connection(h11.CLIENT)
    out: list[tuple[h11.Response, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        # h11's client side takes one request per cycle: give it a stand-in of each
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = b""
        while len(out) < responses:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(s.recv(65536))
            elif isinstance(event, h11.Response):
                head, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                out.append((head, body))
                if len(out) < responses:
                    conn.start_next_cycle()
                    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
                    conn.send(h11.EndOfMessage())
            elif isinstance(event, h11.ConnectionClosed):
                break
    return out


# ---------------------------------------------------------------- keep-alive, per request


def test_keepalive_connection_routes_each_request_on_its_own(rig: Rig) -> None:
    before = rig.accepted
    # one curl, four URLs separated by --next: one keep-alive connection (num_connects 0
    # after the first), headers alternating
    args: list[str] = []
    for i, dev in enumerate(["alice", None, "alice", None]):
        if args:
            args.append("--next")
        args += [*_write_out("num_connects"), f"{rig.url}/r{i}"]
        if dev:
            args += ["-H", f"X-Dev: {dev}"]
    got = _curl(*args)
    assert got.returncode == 0, got.stderr
    answers = _answers(got.stdout)
    assert [body.split()[:3] for body, _ in answers] == [
        ["laptop", "GET", "/r0"], ["origin", "GET", "/r1"], ["laptop", "GET", "/r2"],
        ["origin", "GET", "/r3"]]
    assert [connects for _, connects in answers] == ["1", "0", "0", "0"]
    assert rig.accepted == before + 1  # one client connection for the four
    # the header reached the laptop as the client sent it
    assert "dev=alice" in answers[0][0] and "dev=-" in answers[1][0]


def test_rule_edge_cases_through_the_router(rig: Rig) -> None:
    cases = {
        "X-DEV: alice": "laptop",  # names are matched without regard to case
        "x-dev:    alice  ": "laptop",  # the spaces HTTP strips
        "x-dev: malice": "origin",  # exact, not a search
        "x-dev: Alice": "origin",  # values are exact
        "x-dev-other: alice": "origin",
    }
    for header, expected in cases.items():
        got = _curl(f"{rig.url}/edge", "-H", header)
        assert got.stdout.split()[0] == expected, (header, got.stdout, got.stderr)
    # a field sent twice: one matching occurrence is enough, both reach the upstream
    got = _curl(f"{rig.url}/twice", "-H", "x-dev: bob", "-H", "x-dev: alice")
    assert got.stdout.split()[0] == "laptop"
    assert "dev=bob,alice" in got.stdout


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize("dev,expected", [("alice", "laptop"), (None, "origin")])
def test_chunked_upload_and_chunked_answer_byte_exact(rig: Rig, tmp_path: Any, dev: str | None,
                                                       expected: str) -> None:
    payload = os.urandom(300_000)
    src = tmp_path / "payload"
    src.write_bytes(payload)
    dst = tmp_path / "answer"
    args = [f"{rig.url}/upload", "--data-binary", f"@{src}", "-H", "Transfer-Encoding: chunked",
            "-D", str(tmp_path / "head"), "-o", str(dst)]
    if dev:
        args += ["-H", f"x-dev: {dev}"]
    got = _curl(*args)
    assert got.returncode == 0, got.stderr
    first, _, echoed = dst.read_bytes().partition(b"\n")
    # the upstream got the body chunked (te=chunked), whole; the echo comes back byte-exact
    assert first.decode().split() == [expected, "POST", "/upload", "te=chunked",
                                      f"dev={dev or '-'}", "len=300000"]
    assert echoed == payload
    head = (tmp_path / "head").read_text().lower()
    assert "transfer-encoding: chunked" in head
    assert f"x-served-by: {expected}" in head


def test_expect_100_continue_is_relayed(rig: Rig, tmp_path: Any) -> None:
    payload = os.urandom(50_000)
    src = tmp_path / "payload"
    src.write_bytes(payload)
    # curl waits up to --expect100-timeout for the 100 before sending anyway: a long timeout
    # makes a 100 that the router did not relay show as a slow, 100-less exchange
    started = time.monotonic()
    got = _curl("-v", f"{rig.url}/expect", "--data-binary", f"@{src}", "-H",
                "Expect: 100-continue", "-H", "x-dev: alice", "--expect100-timeout", "10")
    took = time.monotonic() - started
    assert got.returncode == 0, got.stderr
    assert "< HTTP/1.1 100 Continue" in got.stderr
    assert got.stdout.startswith("laptop POST /expect te=- dev=alice len=50000\n")
    assert took < 5


# ---------------------------------------------------------------- pipelining


def test_pipelined_requests_answered_in_order_each_routed(rig: Rig) -> None:
    # the first goes to a slow path of the laptop: were the answers not kept in order, the
    # origin's quick one would come first
    data = (b"GET /slow/1 HTTP/1.1\r\nHost: x\r\nx-dev: alice\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /3 HTTP/1.1\r\nHost: x\r\nx-dev: alice\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = _raw(rig.ports["router"], data, responses=4)
    firsts = [body.split(b"\n")[0].decode().split()[:3] for _, body in answers]
    assert firsts == [["laptop", "GET", "/slow/1"], ["origin", "GET", "/2"],
                      ["laptop", "POST", "/3"], ["origin", "GET", "/4"]]
    assert answers[2][1].endswith(b"len=5\nhello")


# ---------------------------------------------------------------- upgrades


@pytest.mark.parametrize("dev,expected", [("alice", "laptop"), (None, "origin")])
def test_websocket_routed_by_its_upgrade_request(rig: Rig, dev: str | None,
                                                 expected: str) -> None:
    header = [f"x-dev: {dev}"] if dev else []
    ws = websocket.create_connection(f"ws://127.0.0.1:{rig.ports['router']}/ws", header=header,
                                     timeout=10)
    try:
        for i in range(20):
            ws.send(f"hello {i}")
            assert ws.recv() == f"{expected}: hello {i}"
        big = "x" * 200_000  # more than one read of the byte relay, both ways
        ws.send(big)
        assert ws.recv() == f"{expected}: {big}"
    finally:
        ws.close()


def test_websocket_bytes_sent_with_the_upgrade_request_go_first(rig: Rig) -> None:
    """A client that sends its first frame in the same packet as the upgrade request: h11
    holds the frame past the request (trailing data), and the router must send it upstream
    before relaying anything else."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = (f"GET /ws HTTP/1.1\r\nHost: x\r\nx-dev: alice\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
    frame = websocket.ABNF.create_frame("early", websocket.ABNF.OPCODE_TEXT).format()
    with socket.create_connection(("127.0.0.1", rig.ports["router"]), timeout=10) as s:
        s.sendall(head + frame)
        got = b""
        while b"laptop: early" not in got:
            data = s.recv(65536)
            assert data, got
            got += data
    assert got.startswith(b"HTTP/1.1 101 ")
    # the echo is one unmasked text frame after the 101's head
    answer = got.split(b"\r\n\r\n", 1)[1]
    assert answer == b"\x81" + bytes([len("laptop: early")]) + b"laptop: early"


def test_h2c_upgrade_is_declined_and_the_request_routed(rig: Rig) -> None:
    # curl --http2 on http:// offers Upgrade: h2c; the router declines (RFC 9113 deprecated
    # it), curl goes on in HTTP/1.1, and the requests are routed one by one
    got = _curl("--http2", *_write_out("http_version"), f"{rig.url}/a", "-H", "x-dev: alice",
                "--next", "--http2", *_write_out("http_version"), f"{rig.url}/b")
    assert got.returncode == 0, got.stderr
    answers = _answers(got.stdout)
    assert [body.split()[0] for body, _ in answers] == ["laptop", "origin"]
    assert [version for _, version in answers] == ["1.1", "1.1"]


# ---------------------------------------------------------------- errors


def test_unreachable_upstream_is_a_502_and_the_connection_goes_on(rig: Rig) -> None:
    got = _curl(*_write_out("http_code", "num_connects"), f"{rig.url}/a", "-H",
                "x-target: refused", "--next", *_write_out("http_code", "num_connects"),
                f"{rig.url}/b")
    answers = _answers(got.stdout)
    assert answers[0] == ("502 bridge router: refused cannot be reached\n", "502|1")
    assert answers[1][0].startswith("origin GET /b") and answers[1][1] == "200|0"


def test_a_502_reaches_a_client_whose_body_was_not_read(rig: Rig, tmp_path: Any) -> None:
    """The upstream cannot be reached while the client sends a body: the 502 reaches the
    client and the connection closes. (The router also reads and drops the rest of the body
    for a moment before closing, RFC 9112 9.6; on loopback Linux delivers the answer even
    without that, so this test does not show that part.)"""
    src = tmp_path / "payload"
    src.write_bytes(os.urandom(600_000))
    for _ in range(3):
        got = _curl(*_write_out("http_code"), f"{rig.url}/up", "-H", "x-target: refused",
                    "-H", "Expect:", "--data-binary", f"@{src}")  # the body right away
        assert _answers(got.stdout) == [("502 bridge router: refused cannot be reached\n",
                                         "502")], (got.stdout[:200], got.stderr)


def test_upstream_closing_before_its_answer_is_a_502(rig: Rig) -> None:
    got = _curl(*_write_out("http_code"), f"{rig.url}/a", "-H", "x-target: silent")
    assert _answers(got.stdout) == [("502 bridge router: silent failed\n", "502")]


def test_upstream_closing_mid_answer_closes_the_client(rig: Rig) -> None:
    got = _curl(f"{rig.url}/a", "-H", "x-target: cut")
    assert got.returncode == 18, (got.returncode, got.stderr)  # partial file
    assert got.stdout == "0123456789"


def test_upstream_breaking_http_mid_answer_closes_the_client_after_what_came(
        rig: Rig) -> None:
    got = _curl(f"{rig.url}/a", "-H", "x-target: garbled")
    assert got.returncode in (18, 56), (got.returncode, got.stderr)  # partial / recv failure
    assert got.stdout == "0123456789"


def test_unreadable_request_is_refused_and_never_routed(rig: Rig) -> None:
    before = len(rig.routed)
    answers = _raw(rig.ports["router"], b"GET / HTTP/1.1\r\nHost x-dev: alice\r\n\r\n",
                   responses=1)
    assert answers[0][0].status_code == 400
    assert answers[0][1] == b"400 bridge router: a request it cannot read\n"  # none of its bytes
    # h11 takes a head of any size that arrives whole; the limit is on what it holds
    # incomplete, and the router reads 64 KiB at a time
    big = b"GET / HTTP/1.1\r\nHost: x\r\nx-pad: " + b"a" * 200_000 + b"\r\n\r\n"
    answers = _raw(rig.ports["router"], big, responses=1)
    assert answers[0][0].status_code == 431
    assert len(rig.routed) == before


def test_a_stalled_upstream_bounds_what_the_router_reads(rig: Rig) -> None:
    """A client sending a big body to an upstream that never reads: the router reads on only
    as the upstream takes it, so the client is stopped after a few socket buffers, far short
    of the body (a router reading ahead would take all of it into memory)."""
    size = 256 * 1024 * 1024
    sent = 0
    with socket.create_connection(("127.0.0.1", rig.ports["router"]), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nx-target: stall\r\n"
                  b"Content-Length: %d\r\n\r\n" % size)
        s.settimeout(2)
        chunk = b"z" * 65536
        try:
            while sent < size:
                sent += s.send(chunk)
        except TimeoutError:
            pass
    assert sent < 64 * 1024 * 1024, sent


# ---------------------------------------------------------------- the pure part


def test_upstream_headers_drop_hop_by_hop_and_keep_spelling() -> None:
    got = route_h1.upstream_headers([
        (b"Host", b"example"), (b"X-Dev", b"alice"), (b"Connection", b"keep-alive, X-Secret"),
        (b"Keep-Alive", b"timeout=5"), (b"X-Secret", b"hop"), (b"Proxy-Connection", b"x"),
        (b"Content-Length", b"3")])
    assert got == [(b"Host", b"example"), (b"X-Dev", b"alice"), (b"Content-Length", b"3")]


def test_upstream_headers_keep_a_websocket_upgrade_and_drop_h2c() -> None:
    ws = route_h1.upstream_headers([(b"Host", b"h"), (b"Connection", b"Upgrade"),
                                    (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Key", b"k")])
    assert ws == [(b"Host", b"h"), (b"Sec-WebSocket-Key", b"k"), (b"Connection", b"upgrade"),
                  (b"Upgrade", b"websocket")]
    h2c = route_h1.upstream_headers([(b"Host", b"h"), (b"Connection", b"Upgrade, HTTP2-Settings"),
                                     (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAAQ")])
    assert h2c == [(b"Host", b"h")]
    both = route_h1.upstream_headers([(b"Host", b"h"), (b"Connection", b"upgrade"),
                                      (b"upgrade", b"h2c, websocket/13")])
    assert both == [(b"Host", b"h"), (b"Connection", b"upgrade"), (b"upgrade", b"websocket/13")]
    # Upgrade without `Connection: upgrade` is not an offer (RFC 9110 section 7.8)
    assert route_h1.upstream_headers([(b"Host", b"h"), (b"Upgrade", b"websocket")]) == [
        (b"Host", b"h")]


def test_upstream_request_gets_a_host_when_an_http10_client_sent_none() -> None:
    req = h11.Request(method="GET", target="/x", headers=[], http_version="1.0")
    up = route_h1.upstream_request(req)
    assert up.http_version == b"1.1"
    assert list(up.headers.raw_items()) == [(b"Host", b"")]


def test_downstream_headers_drop_hop_by_hop_but_not_on_a_switch() -> None:
    fields = [(b"Connection", b"close"), (b"Keep-Alive", b"timeout=5"), (b"X-A", b"1")]
    assert route_h1.downstream_headers(200, fields) == [(b"X-A", b"1")]
    switch = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    assert route_h1.downstream_headers(101, switch) == switch


def test_by_header_rules_decides_from_the_head_only() -> None:
    rules = headerrules.parse_rules(["x-dev=alice", "x-tenant~=acme|globex"])
    route = route_h1.by_header_rules(rules, "laptop", "origin")

    def req(*fields: tuple[str, str]) -> h11.Request:
        return h11.Request(method="GET", target="/", headers=[("Host", "h"), *fields])

    assert route(req(("X-Dev", "alice"), ("X-Tenant", "acme"))) == "laptop"
    assert route(req(("x-dev", "alice"))) == "origin"  # every rule must match
    assert route(req(("x-dev", "alice"), ("x-tenant", "acmex"))) == "origin"  # full match
    assert route(req(("x-tenant", "globex"), ("x-dev", "bob"), ("x-dev", "alice"))) == "laptop"
