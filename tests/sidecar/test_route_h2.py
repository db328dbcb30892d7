"""The HTTP/2 router (sidecar/route_h2.py), driven by real clients on loopback.

Upstreams that say who answered ("laptop" / "origin"): an h2c server built on h2 in this
file (echoes, slow answers, a stalled reader), and grpcio servers (generic handlers, no
generated code). The router sits in front with the header rule `x-dev=alice`
(sidecar.headerrules): a stream carrying it goes to "laptop", every other to "origin".
Clients: curl --http2-prior-knowledge (one stream per invocation: this curl, 7.88.1, fails
with "Error in the HTTP2 framing layer" when it reuses a prior-knowledge connection, against
any server, so several streams on one connection are driven with grpcio) and grpcio.
Every test asserts which upstream answered, so a wrong route fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from aiohttp import web

from sidecar import headerrules, route_h1, route_h2, route_http

RULES = headerrules.parse_rules(["x-dev=alice"])
CURL = ["curl", "--silent", "--show-error", "--noproxy", "*", "--http2-prior-knowledge"]


# ---------------------------------------------------------------- the rig


class H2Server:
    """An h2c server on h2: answers `NAME METHOD PATH dev=... len=N` and, to a POST, the
    body after it; `/slow` answers after 3 s; `/stall` never acknowledges (nor answers) what
    it is sent, like a laptop stopped at a breakpoint."""

    def __init__(self, name: str, max_streams: int | None = None) -> None:
        self.name = name
        self.resets: list[str] = []
        self.max_streams = max_streams
        self.answered: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        if self.max_streams is not None:
            conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                                  self.max_streams})
        writer.write(conn.data_to_send())
        streams: dict[int, dict[str, Any]] = {}
        opened = asyncio.Event()
        tasks: dict[int, asyncio.Task[None]] = {}
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = {"h": dict(ev.headers), "body": bytearray()}
                    elif isinstance(ev, h2.events.DataReceived):
                        st = streams[ev.stream_id]
                        st["body"] += ev.data
                        if st["h"][b":path"] != b"/stall":
                            conn.acknowledge_received_data(ev.flow_controlled_length,
                                                           ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        tasks[ev.stream_id] = asyncio.ensure_future(self._respond(
                            conn, writer, ev.stream_id, streams[ev.stream_id], opened))
                    elif isinstance(ev, h2.events.StreamReset):
                        self.resets.append(streams[ev.stream_id]["h"][b":path"].decode())
                        if ev.stream_id in tasks:
                            tasks[ev.stream_id].cancel()
                    elif isinstance(ev, (h2.events.WindowUpdated,
                                         h2.events.RemoteSettingsChanged)):
                        opened.set()
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError, asyncio.CancelledError):
            pass  # (cancelled: the rig stops)
        finally:
            for task in tasks.values():
                task.cancel()
            writer.close()

    async def _respond(self, conn: h2.connection.H2Connection, writer: asyncio.StreamWriter,
                       sid: int, st: dict[str, Any], opened: asyncio.Event) -> None:
        h = st["h"]
        if h[b":path"].startswith(b"/slow"):
            await asyncio.sleep(3)
        line = (f"{self.name} {h[b':method'].decode()} {h[b':path'].decode()} "
                f"dev={h.get(b'x-dev', b'-').decode()} len={len(st['body'])}\n").encode()
        payload = line + (bytes(st["body"]) if h[b":method"] == b"POST" else b"")
        conn.send_headers(sid, [(b":status", b"200"), (b"x-served-by", self.name.encode())])
        while payload:
            n = min(len(payload), conn.local_flow_control_window(sid),
                    conn.max_outbound_frame_size)
            if n <= 0:
                opened.clear()
                writer.write(conn.data_to_send())
                await opened.wait()
                continue
            conn.send_data(sid, payload[:n])
            payload = payload[n:]
            writer.write(conn.data_to_send())
            await writer.drain()
        conn.end_stream(sid)
        writer.write(conn.data_to_send())
        self.answered.append(h[b":path"].decode())


class Grpc:
    """A grpcio server (generic handlers): Unary answers `NAME: request` with trailing
    metadata `served-by: NAME` (NOT_FOUND, trailers only, for the request b"missing");
    Stream sends `NAME i` until cancelled, which it records."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cancelled = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            if request == b"slow":
                time.sleep(3)
            if request == b"missing":
                context.abort(grpc.StatusCode.NOT_FOUND, f"{name}: no such thing")
            dev = dict(context.invocation_metadata()).get("x-dev", "-")
            context.set_trailing_metadata((("served-by", name),))
            return f"{name}: {request.decode()} dev={dev}".encode()

        def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            context.add_callback(self.cancelled.set)
            i = 0
            while context.is_active():
                yield f"{name} {i}".encode()
                i += 1
                time.sleep(0.02)

        handler = grpc.method_handlers_generic_handler("echo.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        })
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


async def _goaway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An h2c upstream going away: to a request on `/refuse` it sends GOAWAY with last stream
    0 (not processed); to any other it answers the head, then GOAWAY naming that stream."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    with contextlib.suppress(asyncio.CancelledError):  # the rig stops
        await _goaway_serve(conn, reader, writer)


async def _goaway_serve(conn: h2.connection.H2Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                if dict(ev.headers)[b":path"] == b"/refuse":
                    conn.close_connection(last_stream_id=0)
                else:
                    conn.send_headers(ev.stream_id, [(b":status", b"200")])
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    await asyncio.sleep(0.2)
                    conn.close_connection(last_stream_id=ev.stream_id)
                writer.write(conn.data_to_send())
                await asyncio.sleep(0.5)
                writer.close()
                return
        writer.write(conn.data_to_send())


class H2Client:
    """An h2c client on h2 (curl here cannot reuse a prior-knowledge connection): several
    streams on one connection, bodies sent within the windows, answers collected."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.streams: dict[int, dict[str, Any]] = {}
        self.opened = asyncio.Event()
        self.terminated: Any = None

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for ev in self.conn.receive_data(data):
                st = self.streams.get(getattr(ev, "stream_id", 0) or 0)
                if isinstance(ev, h2.events.ResponseReceived) and st is not None:
                    st["headers"] = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived) and st is not None:
                    st["data"] += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length,
                                                        ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived) and st is not None:
                    st["trailers"] = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded) and st is not None:
                    st["done"].set()
                elif isinstance(ev, h2.events.StreamReset) and st is not None:
                    st["reset"] = ev.error_code
                    st["done"].set()
                elif isinstance(ev, (h2.events.WindowUpdated,
                                     h2.events.RemoteSettingsChanged)):
                    self.opened.set()
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.terminated = ev
            self.writer.write(self.conn.data_to_send())

    def start(self, path: str, headers: list[tuple[bytes, bytes]], *,
              body: bool = False) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = {"headers": None, "data": b"", "trailers": None, "reset": None,
                             "done": asyncio.Event(), "sent": 0}
        self.conn.send_headers(sid, [(b":method", b"POST" if body else b"GET"),
                                     (b":path", path.encode()), (b":scheme", b"http"),
                                     (b":authority", b"test"), *headers],
                               end_stream=not body)
        self.writer.write(self.conn.data_to_send())
        return sid

    async def send(self, sid: int, body: bytes) -> None:
        """The body within the windows, then END_STREAM; waits as long as they stay shut."""
        while body:
            n = min(len(body), self.conn.local_flow_control_window(sid),
                    self.conn.max_outbound_frame_size)
            if n <= 0:
                self.opened.clear()
                await self.opened.wait()
                continue
            self.conn.send_data(sid, body[:n])
            self.streams[sid]["sent"] += n
            body = body[n:]
            self.writer.write(self.conn.data_to_send())
            await self.writer.drain()
        self.conn.end_stream(sid)
        self.writer.write(self.conn.data_to_send())

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.writer.write(self.conn.data_to_send())

    async def answer(self, sid: int) -> dict[str, Any]:
        async with asyncio.timeout(10):
            await self.streams[sid]["done"].wait()
        return self.streams[sid]

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


def _h1_app(name: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"{name} h1 {request.path}\n")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


class Rig:
    """Upstreams and routers, on an event loop of their own in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ports: dict[str, int] = {}
        self.routed: list[str] = []
        self.accepted = 0
        self.connects: list[str] = []
        self.h2 = {name: H2Server(name) for name in ("laptop", "origin")}
        self.h2["narrow"] = H2Server("narrow", max_streams=1)
        self.grpc = {name: Grpc(name) for name in ("laptop", "origin")}
        self.ports.update({"g" + name: g.port for name, g in self.grpc.items()})
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._cleanup: list[Any] = []
        self.call(self._start())

    def call(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _route(self, prefix: str, headers: Any) -> str:
        forced = [v.decode() for n, v in headers if n == b"x-target"]
        target = forced[0] if forced else prefix + self.by_rules(headers)
        self.routed.append(target)
        return target

    async def connect(self, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.connects.append(target)
        return await asyncio.open_connection("127.0.0.1", self.ports[target])

    async def _serve(self, kind: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        with contextlib.suppress(asyncio.CancelledError):  # the rig stops
            await self._serve_one(kind, reader, writer)

    async def _serve_one(self, kind: str, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if kind == "http":
            await route_http.serve(reader, writer, lambda r: self._route("h1", r.headers),
                                   lambda h: self._route("", h), self.connect)
        else:
            await route_h2.serve(reader, writer, lambda h: self._route(kind, h), self.connect)

    async def _start(self) -> None:
        self.by_rules = route_h2.by_header_rules(RULES, "laptop", "origin")
        for name, h2server in self.h2.items():
            server = await asyncio.start_server(h2server.handle, "127.0.0.1", 0)
            self.ports[name] = server.sockets[0].getsockname()[1]
            self._cleanup.append(server)
            runner = web.AppRunner(_h1_app(name), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.ports["h1" + name] = runner.addresses[0][1]
            self._cleanup.append(runner)
        server = await asyncio.start_server(_goaway, "127.0.0.1", 0)
        self.ports["goaway"] = server.sockets[0].getsockname()[1]
        self._cleanup.append(server)
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            self.ports["refused"] = s.getsockname()[1]
        for kind in ("", "g", "http"):
            server = await asyncio.start_server(
                lambda r, w, kind=kind: self._serve(kind, r, w), "127.0.0.1", 0)
            self.ports["router" + kind] = server.sockets[0].getsockname()[1]
            self._cleanup.append(server)

    async def _stop(self) -> None:
        for item in self._cleanup:
            if isinstance(item, web.AppRunner):
                await item.cleanup()
            else:
                item.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        self.call(self._stop())
        for g in self.grpc.values():
            g.server.stop(0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def url(self, path: str, router: str = "router") -> str:
        return f"http://127.0.0.1:{self.ports[router]}{path}"


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()


def _curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CURL, *args], capture_output=True, timeout=timeout, check=False)


def _channel(rig: Rig, router: str = "routerg") -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{rig.ports[router]}",
                                 options=[("grpc.enable_http_proxy", 0)])


# ---------------------------------------------------------------- curl: streams on one connection


def test_curl_streams_are_routed_by_their_header(rig: Rig) -> None:
    devs = ["alice", None, "alice", "bob", None]
    for i, dev in enumerate(devs):
        out = _curl(rig.url(f"/{i}"), "-w", "%{http_version}\n",
                    *(["-H", f"x-dev: {dev}"] if dev else []))
        assert out.returncode == 0, out.stderr
        answer, version = out.stdout.decode().splitlines()
        who = "laptop" if dev == "alice" else "origin"
        assert answer == f"{who} GET /{i} dev={dev or '-'} len=0"
        assert version == "2"
    assert rig.routed == ["laptop", "origin", "laptop", "origin", "origin"]


def test_a_large_post_is_echoed_byte_exact_through_flow_control(rig: Rig, tmp_path: Any) -> None:
    body = os.urandom(5 * 1024 * 1024 + 123)
    src = tmp_path / "body"
    src.write_bytes(body)
    for dev, who in (("alice", "laptop"), ("bob", "origin")):
        out = _curl("--max-time", "60", "-H", f"x-dev: {dev}", "--data-binary", f"@{src}",
                    rig.url("/upload"), timeout=90)
        assert out.returncode == 0, out.stderr
        head, echoed = out.stdout.split(b"\n", 1)
        assert head.decode() == f"{who} POST /upload dev={dev} len={len(body)}"
        assert echoed == body


def test_an_upstream_that_cannot_be_reached_gives_502(rig: Rig) -> None:
    out = _curl(rig.url("/a"), "-H", "x-target: refused", "-w", "\n%{http_code}\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == "502 bridge router: refused failed\n\n502\n"
    assert rig.connects == ["refused"]


def test_the_dispatcher_picks_h2_on_the_preface_and_h1_otherwise(rig: Rig) -> None:
    h2out = _curl(rig.url("/x", "routerhttp"), "-H", "x-dev: alice")
    h1out = subprocess.run(["curl", "--silent", "--noproxy", "*", "-H", "x-dev: alice",
                            rig.url("/y", "routerhttp")], capture_output=True, timeout=20,
                           check=False)
    assert h2out.stdout.decode().startswith("laptop GET /x dev=alice"), h2out.stderr
    assert h1out.stdout.decode() == "laptop h1 /y\n"
    with socket.create_connection(("127.0.0.1", rig.ports["routerhttp"]), timeout=10) as s:
        s.sendall(b"GET /z HTTP/1.0\r\n\r\n")  # shorter than the preface: no wait for more
        got = b""
        while data := s.recv(65536):
            got += data
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"origin h1 /z\n")
    assert rig.routed == ["laptop", "h1laptop", "h1origin"]


# ---------------------------------------------------------------- an h2 client: many streams


def test_h2_streams_on_one_connection_alternate_targets(rig: Rig) -> None:
    async def run() -> list[bytes]:
        client = H2Client()
        await client.open(rig.ports["router"])
        devs = [b"alice", None, b"alice", b"bob", None, b"alice"]
        sids = [client.start(f"/{i}", [(b"x-dev", d)] if d else []) for i, d in enumerate(devs)]
        answers = [(await client.answer(sid))["data"] for sid in sids]
        client.close()
        return answers

    answers = rig.call(run())
    assert [a.decode() for a in answers] == [
        "laptop GET /0 dev=alice len=0\n", "origin GET /1 dev=- len=0\n",
        "laptop GET /2 dev=alice len=0\n", "origin GET /3 dev=bob len=0\n",
        "origin GET /4 dev=- len=0\n", "laptop GET /5 dev=alice len=0\n"]
    assert rig.accepted == 1
    assert sorted(rig.connects) == ["laptop", "origin"]  # one upstream connection per target


def test_a_stalled_upload_holds_only_its_own_stream(rig: Rig) -> None:
    """The laptop never reads a 4 MiB upload: that stream stalls once the windows are full
    (the router holding at most its 1 MiB stream window of it), while streams to the origin
    on the same client connection are answered, uploads included."""
    async def run() -> tuple[int, dict[str, Any], dict[str, Any], bool]:
        client = H2Client()
        await client.open(rig.ports["router"])
        stalled = client.start("/stall", [(b"x-dev", b"alice")], body=True)
        upload = asyncio.ensure_future(client.send(stalled, os.urandom(4 * 1024 * 1024)))
        await asyncio.sleep(1.0)
        get = client.start("/fast", [])
        post = client.start("/post", [], body=True)
        await client.send(post, b"x" * 300_000)
        answers = await client.answer(get), await client.answer(post)
        sent = client.streams[stalled]["sent"]
        pending = not upload.done()
        upload.cancel()
        client.close()
        return sent, answers[0], answers[1], pending

    sent, get, post, pending = rig.call(run())
    assert pending
    assert get["data"] == b"origin GET /fast dev=- len=0\n"
    assert post["data"].startswith(b"origin POST /post dev=- len=300000\n")
    # what left the client: the router's 1 MiB stream window plus what the laptop's socket
    # and its 64 KiB h2 window took, not the 4 MiB
    assert 1024 * 1024 <= sent < 3 * 1024 * 1024, sent


def test_streams_beyond_an_upstreams_limit_wait_and_beyond_the_queue_are_refused(
        rig: Rig) -> None:
    """An upstream that takes one stream at a time: the next 64 wait for it, the 66th is
    refused (REFUSED_STREAM, safe to retry). Also for streams that came before the
    upstream's SETTINGS said so (on a connection of their own)."""
    async def early() -> list[dict[str, Any]]:
        client = H2Client()
        await client.open(rig.ports["router"])
        sids = [client.start(path, [(b"x-target", b"narrow")]) for path in ("/slow", "/next")]
        answers = [await client.answer(sid) for sid in sids]
        client.close()
        return answers

    first, second = rig.call(early(), timeout=40)
    assert first["data"] == b"narrow GET /slow dev=- len=0\n"
    assert second["data"] == b"narrow GET /next dev=- len=0\n"
    assert rig.h2["narrow"].answered == ["/slow", "/next"]

    async def run() -> list[dict[str, Any]]:
        client = H2Client()
        await client.open(rig.ports["router"])
        sids = [client.start("/slow", [(b"x-target", b"narrow")])]
        await asyncio.sleep(0.5)
        sids += [client.start(f"/q{i}", [(b"x-target", b"narrow")]) for i in range(65)]
        async with asyncio.timeout(30):
            answers = [await client.answer(sid) for sid in sids]
        client.close()
        return answers

    answers = rig.call(run(), timeout=40)
    assert [a["reset"] for a in answers] == [None] * 65 + [h2.errors.ErrorCodes.REFUSED_STREAM]
    assert answers[0]["data"] == b"narrow GET /slow dev=- len=0\n"
    assert answers[64]["data"] == b"narrow GET /q63 dev=- len=0\n"
    assert rig.h2["narrow"].answered[2:] == ["/slow"] + [f"/q{i}" for i in range(64)]
    assert rig.connects == ["narrow", "narrow"]


def test_upstream_goaway_refuses_unprocessed_streams_and_cancels_the_rest(rig: Rig) -> None:
    async def run() -> tuple[Any, Any, dict[str, Any]]:
        client = H2Client()
        await client.open(rig.ports["router"])
        refused = client.start("/refuse", [(b"x-target", b"goaway")])
        a = await client.answer(refused)
        begun = client.start("/begun", [(b"x-target", b"goaway")])
        b = await client.answer(begun)
        after = client.start("/after", [(b"x-dev", b"alice")])
        c = await client.answer(after)
        client.close()
        return a, b, c

    refused, begun, after = rig.call(run())
    assert refused["reset"] == h2.errors.ErrorCodes.REFUSED_STREAM
    assert begun["headers"][b":status"] == b"200" and begun["reset"] == h2.errors.ErrorCodes.CANCEL
    assert after["data"] == b"laptop GET /after dev=alice len=0\n"  # the connection goes on
    assert rig.connects == ["goaway", "goaway", "laptop"]  # a new connection after a GOAWAY


def test_h2_client_reset_reaches_the_upstream(rig: Rig) -> None:
    async def run() -> dict[str, Any]:
        client = H2Client()
        await client.open(rig.ports["router"])
        slow = client.start("/slow-cancelled", [(b"x-dev", b"alice")])
        await asyncio.sleep(0.5)
        client.reset(slow)
        for _ in range(100):
            if rig.h2["laptop"].resets:
                break
            await asyncio.sleep(0.05)
        fine = client.start("/fine", [])
        answer = await client.answer(fine)
        client.close()
        return answer

    assert rig.call(run())["data"] == b"origin GET /fine dev=- len=0\n"
    assert rig.h2["laptop"].resets == ["/slow-cancelled"]
    assert rig.h2["origin"].resets == []


# ---------------------------------------------------------------- gRPC


def test_grpc_unary_is_routed_by_metadata_and_trailers_come_back(rig: Rig) -> None:
    with _channel(rig) as channel:
        unary = channel.unary_unary("/echo.Echo/Unary")
        for dev, who in (("alice", "laptop"), ("bob", "origin"), (None, "origin"),
                         ("alice", "laptop")):
            metadata = [("x-dev", dev)] if dev else []
            answer, call = unary.with_call(b"hi", metadata=metadata, timeout=10)
            assert answer == f"{who}: hi dev={dev or '-'}".encode()
            assert call.code() == grpc.StatusCode.OK
            assert ("served-by", who) in list(call.trailing_metadata())
    assert rig.accepted == 1
    assert rig.routed == ["glaptop", "gorigin", "gorigin", "glaptop"]


def test_a_slow_upstream_does_not_hold_the_other_targets_streams(rig: Rig) -> None:
    """Two calls on one connection: the laptop's takes 3 s, the origin's is answered
    while it is still pending (no head-of-line blocking across targets)."""
    with _channel(rig) as channel:
        unary = channel.unary_unary("/echo.Echo/Unary")
        slow = unary.future(b"slow", metadata=[("x-dev", "alice")], timeout=20)
        time.sleep(0.3)  # the slow stream is open at the laptop first
        assert unary(b"fast", timeout=10) == b"origin: fast dev=-"
        assert not slow.done()
        assert slow.result() == b"laptop: slow dev=alice"
    assert rig.accepted == 1
    assert rig.routed == ["glaptop", "gorigin"]


def test_grpc_trailers_only_error_is_relayed(rig: Rig) -> None:
    with _channel(rig) as channel:
        unary = channel.unary_unary("/echo.Echo/Unary")
        for dev, who in (("alice", "laptop"), (None, "origin")):
            with pytest.raises(grpc.RpcError) as err:
                unary(b"missing", metadata=[("x-dev", dev)] if dev else [], timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            assert err.value.details() == f"{who}: no such thing"  # type: ignore[attr-defined]


def test_grpc_unreachable_upstream_is_unavailable(rig: Rig) -> None:
    with _channel(rig) as channel:
        unary = channel.unary_unary("/echo.Echo/Unary")
        with pytest.raises(grpc.RpcError) as err:
            unary(b"hi", metadata=[("x-target", "refused")], timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert unary(b"again", timeout=10) == b"origin: again dev=-"


def test_client_cancel_resets_the_upstream_stream(rig: Rig) -> None:
    with _channel(rig) as channel:
        stream = channel.unary_stream("/echo.Echo/Stream")
        call = stream(b"go", metadata=[("x-dev", "alice")], timeout=30)
        first = next(call)
        assert first.startswith(b"laptop ")
        assert not rig.grpc["laptop"].cancelled.is_set()
        call.cancel()  # RST_STREAM CANCEL from the client
        assert rig.grpc["laptop"].cancelled.wait(10)
        # the connection and the router go on
        assert channel.unary_unary("/echo.Echo/Unary")(b"x", timeout=10) == b"origin: x dev=-"
    assert not rig.grpc["origin"].cancelled.is_set()


# ---------------------------------------------------------------- the pure helper


def test_by_header_rules_ignores_pseudo_headers() -> None:
    route = route_h2.by_header_rules(RULES, "laptop", "origin")
    assert route([(b":path", b"/"), (b"x-dev", b"alice")]) == "laptop"
    assert route([(b":path", b"/"), (b"x-dev", b"malice")]) == "origin"
    assert route([(b":authority", b"alice")]) == "origin"
    assert route_h1.Reader is route_http.Reader
