"""`pods/{name}/portforward` as kubectl (1.31+) asks for it: SPDY/3.1 tunneled in a websocket.

kubectl offers the websocket subprotocol `SPDY/3.1+portforward.k8s.io`; every binary message
then carries raw bytes of one SPDY/3.1 connection (see spdy.py). The ports are not in the
query string: for each local connection kubectl opens two streams sharing a `requestID`
header, an `error` stream (which it half-closes at once) and a `data` stream, both with a
`port` header. Like the kubelet, the server accepts each stream, and once a pair is complete
dials localhost:PORT inside the pod's network namespace (node.dial) and copies bytes between
the data stream and that connection. A dial failure is written as text on the error stream;
either way both streams are half-closed when the pod side ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import spdy
from .errors import bad_request

PROTOCOL = "SPDY/3.1+portforward.k8s.io"
CHUNK = 64 * 1024


def offers_tunnel(request: web.Request) -> bool:
    """Whether the client asked for the SPDY-over-websocket port-forward subprotocol."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    return PROTOCOL in (p.strip() for p in offered.split(","))


def stream_port(headers: spdy.Headers) -> int | None:
    """The stream's `port` header if it is a valid TCP port, else None."""
    value = (headers.get("port") or [""])[0]
    if not value.isdigit() or not 0 < int(value) < 65536:
        return None
    return int(value)


def stream_kind(headers: spdy.Headers) -> str | None:
    kind = (headers.get("streamtype") or [""])[0]
    return kind if kind in ("data", "error") else None


def request_id(headers: spdy.Headers, stream_id: int, kind: str) -> str:
    """The pair a stream belongs to; clients too old to send `requestID` open the error
    stream and then the data stream with consecutive odd ids, as the kubelet assumes."""
    value = (headers.get("requestid") or [""])[0]
    if value:
        return value
    return str(stream_id if kind == "error" else stream_id - 2)


@dataclass
class _Pair:
    port: int
    data: int | None = None
    error: int | None = None
    writer: asyncio.StreamWriter | None = None
    pending: list[bytes] = field(default_factory=list)
    client_done: bool = False  # the client half-closed the data stream
    task: asyncio.Task[None] | None = None


async def serve_tunnel(request: web.Request, node: Any, namespace: str, pod_name: str,
                       uid: str) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), autoping=True, max_msg_size=0,
                               compress=False)
    if not ws.can_prepare(request).ok:
        raise bad_request("Upgrade request required")
    await ws.prepare(request)
    session = spdy.Session()
    pairs: dict[str, _Pair] = {}
    by_stream: dict[int, _Pair] = {}
    started: set[asyncio.Task[None]] = set()
    send_lock = asyncio.Lock()

    async def flush() -> None:
        # Taken under the lock so frames leave in the order the session produced them
        # (header blocks share one compression context).
        async with send_lock:
            out = session.take_output()
            if out and not ws.closed:
                await ws.send_bytes(out)

    def end_pair(pair: _Pair) -> None:
        if pair.data is not None:
            session.close(pair.data)
        if pair.error is not None:
            session.close(pair.error)

    async def forward(pair: _Pair) -> None:
        assert pair.data is not None and pair.error is not None
        try:
            reader, writer = await node.dial(namespace, pod_name, pair.port)
        except (ConnectionError, OSError) as err:
            message = f"error forwarding port {pair.port} to pod {uid}, uid : {err}"
            session.send(pair.error, message.encode())
            end_pair(pair)
            await flush()
            return
        pair.writer = writer
        try:
            for chunk in pair.pending:
                writer.write(chunk)
            pair.pending.clear()
            if pair.client_done and writer.can_write_eof():
                writer.write_eof()
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                session.send(pair.data, data)
                await flush()
        except (ConnectionError, OSError):
            pass
        finally:
            pair.writer = None
            writer.close()
            end_pair(pair)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await flush()

    def opened(event: spdy.StreamOpened) -> None:
        port, kind = stream_port(event.headers), stream_kind(event.headers)
        if port is None or kind is None:
            session.reset(event.stream_id, spdy.PROTOCOL_ERROR)
            return
        session.reply(event.stream_id)
        key = request_id(event.headers, event.stream_id, kind)
        pair = pairs.setdefault(key, _Pair(port))
        if getattr(pair, kind) is not None:
            session.reset(event.stream_id, spdy.PROTOCOL_ERROR)
            return
        setattr(pair, kind, event.stream_id)
        by_stream[event.stream_id] = pair
        if pair.data is not None and pair.error is not None:
            pair.task = asyncio.ensure_future(forward(pair))
            started.add(pair.task)
            pair.task.add_done_callback(started.discard)

    async def to_pod(pair: _Pair, data: bytes) -> None:
        if pair.writer is None:
            pair.pending.append(data)
            return
        pair.writer.write(data)
        with contextlib.suppress(ConnectionError, OSError):
            await pair.writer.drain()

    def client_finished(pair: _Pair) -> None:
        pair.client_done = True
        if pair.writer is not None and pair.writer.can_write_eof():
            with contextlib.suppress(ConnectionError, OSError):
                pair.writer.write_eof()

    def forget(pair: _Pair) -> None:
        for stream_id in (pair.data, pair.error):
            if stream_id is not None:
                by_stream.pop(stream_id, None)
                if stream_id in session.streams:
                    session.reset(stream_id)
        for key, value in list(pairs.items()):
            if value is pair:
                del pairs[key]
        if pair.task is not None:
            pair.task.cancel()
        if pair.writer is not None:
            pair.writer.close()

    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            try:
                events = session.receive(msg.data)
            except spdy.ProtocolError:
                session.go_away(1)
                break
            gone = False
            for event in events:
                if isinstance(event, spdy.StreamOpened):
                    opened(event)
                    continue
                if isinstance(event, spdy.GoneAway):
                    gone = True
                    continue
                pair = by_stream.get(event.stream_id)
                if pair is None:
                    continue
                if isinstance(event, spdy.StreamData) and event.stream_id == pair.data:
                    await to_pod(pair, event.data)
                elif isinstance(event, spdy.StreamHalfClosed) and event.stream_id == pair.data:
                    client_finished(pair)
                elif isinstance(event, spdy.StreamReset):
                    forget(pair)
            await flush()
            if gone:
                break
    finally:
        for pair in list(by_stream.values()):
            forget(pair)
        for task in list(started):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(ConnectionError, RuntimeError):
            await flush()
        await ws.close()
    return ws
