"""HTTP/2 routed per stream (h2): one h2c client connection (prior knowledge, what gRPC
uses), each stream relayed to the upstream that a routing decision picks from its request
headers.

A building block of the router (docs/design/cluster-keeps-serving.md, sections 6 and 7.1),
**not wired in yet**: nothing in the sidecar calls `serve`; a swap still hands whole
connections to the laptop (sidecar/forwards.py). Same shape as `route_h1.serve`:

- `route(headers) -> target`: the decision, from a stream's request headers alone (h2's
  list of `(name, value)` byte pairs, names lower-case, pseudo-headers such as `:path`
  included; `by_header_rules` never matches those, sidecar.headerrules refuses them);
- `connect(target) -> (reader, writer)`: a byte stream to that target. Any exception means
  it did not open.

h2 does every byte of framing, HPACK and flow-control bookkeeping; this module moves events
between one `H2Connection` on the client's side (server role) and one per upstream (client
role). **One upstream h2 connection per target per client connection** (opened at the
first stream routed there, its streams multiplexed on it); a pool shared between client
connections is the router core's (work item 4), as are the open timeout and SUSPECT/AWAY
laptops and idle timeouts.

- **Headers** go on as they came (pseudo-headers included; h2 refuses connection-specific
  fields on both sides). A HEADERS frame that ends its stream (a GET, a gRPC trailers-only
  answer) goes on ending it. 1xx answers are relayed. Server push is off upstream.
- **Flow control, both ways**: DATA received from one side is kept per stream and sent on
  only within the other side's window (`local_flow_control_window`, `max_outbound_frame_size`);
  it is acknowledged to the sender (`acknowledge_received_data`, which reopens the sender's
  stream and connection windows) only once it went out and the receiving side's socket
  drained. So what the router holds per stream is bounded by the window it gave the sender
  (1 MiB a stream, `STREAM_WINDOW`), and a slow upstream stalls only its own streams: the
  connection windows are opened wide (16 MiB, `CONNECTION_WINDOW`) so the streams beside it
  on the same client connection keep flowing. Not here yet: the design's reset of a 17th
  stalled stream (`ENHANCE_YOUR_CALM`) once 16 stalled ones hold the whole connection window.
- **Trailers** (gRPC's `grpc-status`) go on after the last DATA, with END_STREAM.
- **Resets** both ways: a RST_STREAM from one side resets the mapped stream on the other,
  with the same error code (a client's CANCEL cancels the upstream call; an upstream's
  REFUSED_STREAM tells the client it may retry).
- **An upstream that fails** (cannot be reached, closes, breaks HTTP/2, or the routing
  decision raised): a stream that has no response head yet gets a `502` (HEADERS, a short
  text body when the window allows it, END_STREAM; gRPC clients read a 502 as UNAVAILABLE)
  and, if the client was still sending, RST_STREAM NO_ERROR after it; a stream whose
  response had begun is reset (CANCEL). No retries.
- **GOAWAY from an upstream** (h2 closes its connection state on it, python-hyper/h2#1181, so
  nothing more can be read from it): streams above its `last_stream_id` were not processed
  and are reset downstream with REFUSED_STREAM (safe to retry), the others that are still
  open with CANCEL; the next stream to that target opens a new connection. A GOAWAY or a
  protocol error from the client ends the client connection and every upstream one.
- **MAX_CONCURRENT_STREAMS** of an upstream: streams beyond it wait in a queue per upstream
  (`QUEUE`, 64), beyond that they are refused (REFUSED_STREAM). So that the limit is known,
  a new upstream connection carries no stream before the upstream's first SETTINGS (servers
  send it at once: the first stream of a connection waits one round trip more).
- Bounded otherwise too: the client is read (at most READ_SIZE at a time) only after what
  the router wrote to it drained, and each upstream likewise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from sidecar import headerrules
from sidecar.route_h1 import Reader, Writer

log = logging.getLogger("sidecar")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the client's first 24 bytes (RFC 9113 3.4)
READ_SIZE = 64 * 1024
STREAM_WINDOW = 1024 * 1024  # what a sender may have in flight per stream (and we hold)
CONNECTION_WINDOW = 16 * 1024 * 1024  # ... per connection, over all its streams
QUEUE = 64  # streams waiting for room under an upstream's MAX_CONCURRENT_STREAMS

T = TypeVar("T", bound=Hashable)
Headers = Sequence[tuple[bytes, bytes]]
Route = Callable[[Headers], T]
Connect = Callable[[T], Awaitable[tuple[Reader, Writer]]]


def by_header_rules(rules: Sequence[headerrules.Rule], matched: T, otherwise: T) -> Route[T]:
    """`matched` for a stream whose request headers satisfy every rule (design section 11),
    else `otherwise`; `route_h1.by_header_rules`'s twin for h2's header lists."""
    def route(headers: Headers) -> T:
        return matched if headerrules.matches(rules, headers) else otherwise
    return route


def _connection(client_side: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=client_side, header_encoding=None))
    conn.initiate_connection()
    settings: dict[int, int] = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW}
    if client_side:
        settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    conn.update_settings(settings)
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return conn


def _send_within_window(conn: h2.connection.H2Connection, sid: int, buf: bytearray, *,
                        ended: bool, trailers: list[tuple[bytes, bytes]] | None,
                        end_sent: bool) -> tuple[int, bool]:
    """Send `buf` on stream `sid` of `conn` as far as its flow-control window and frame size
    go (what is sent leaves `buf`); once `buf` is empty and its sender `ended`, end the
    stream, with `trailers` when there are some. (bytes sent, whether the end was sent). A
    stream the other side reset or closed meanwhile drops the rest of `buf`: its reset comes
    on its own."""
    sent = 0
    try:
        while buf:
            n = min(len(buf), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if n <= 0:
                break
            chunk = bytes(buf[:n])
            del buf[:n]
            end = ended and not buf and trailers is None
            conn.send_data(sid, chunk, end_stream=end)
            sent += n
            end_sent = end
        if ended and not buf and not end_sent:
            if trailers is not None:
                conn.send_headers(sid, trailers, end_stream=True)
            else:
                conn.end_stream(sid)
            end_sent = True
    except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
        buf.clear()
    return sent, end_sent


class _Side:
    """One h2 connection and its socket. What h2 queues is written once per turn of the
    event loop (the frames of one batch of events in one write); callbacks registered with
    a flush run once that write drained (that is when the other side's data is
    acknowledged)."""

    def __init__(self, conn: h2.connection.H2Connection, writer: Writer,
                 on_failure: Callable[[str], None]) -> None:
        self.conn = conn
        self.writer = writer
        self.on_failure = on_failure
        self.failed = False
        self._after: list[Callable[[], None]] = []  # for data not written yet
        self._written: list[Callable[[], None]] = []  # for data written, not drained
        self._scheduled = False
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._drainer())

    def flush(self, after: Callable[[], None] | None = None) -> None:
        if after is not None:
            self._after.append(after)
        if not self._scheduled and not self.failed:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.write)

    def write(self) -> None:
        """What h2 queued, to the socket now."""
        self._scheduled = False
        if self.failed:
            return
        data = self.conn.data_to_send()
        try:
            if data:
                self.writer.write(data)
        except (OSError, RuntimeError) as exc:
            self._fail(f"writing: {exc}")
            return
        if self._after:
            self._written += self._after
            self._after = []
            self._wake.set()

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (OSError, EOFError, RuntimeError) as exc:
            self._fail(f"writing: {exc}")

    async def _drainer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            after, self._written = self._written, []
            await self.drain()
            if self.failed:
                return
            for callback in after:
                callback()

    def _fail(self, reason: str) -> None:
        if not self.failed:
            self.failed = True
            self.on_failure(reason)

    def close(self) -> None:
        self.failed = True
        self._task.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()


class _Stream:
    """One client stream and where it went."""

    def __init__(self, sid: int, headers: Headers, ended: bool) -> None:
        self.sid = sid  # on the client connection
        self.headers = list(headers)
        self.up: _Upstream | None = None
        self.up_sid: int | None = None  # on the upstream connection, once opened
        # client -> upstream
        self.to_up = bytearray()
        self.to_up_trailers: list[tuple[bytes, bytes]] | None = None
        self.client_ended = ended  # the client ended its side (all of it is in to_up)
        self.up_end_sent = False
        # upstream -> client
        self.to_down = bytearray()
        self.to_down_trailers: list[tuple[bytes, bytes]] | None = None
        self.up_ended = False
        self.head_sent = False  # a response head went to the client
        self.down_end_sent = False
        self.done = False  # reset or answered by the router: nothing more is relayed


class _Upstream:
    """One h2 connection to a target, shared by the streams routed there."""

    def __init__(self, target: Hashable) -> None:
        self.target = target
        self.side: _Side | None = None  # once connected
        self.reader: Reader | None = None
        self.streams: dict[int, _Stream] = {}  # by upstream stream id
        self.waiting: deque[_Stream] = deque()  # not opened yet (connecting, or no room)
        self.lost = False
        self.settled = False  # its first SETTINGS came (MAX_CONCURRENT_STREAMS is known)
        self.task: asyncio.Future[None] | None = None


class _Relay(Generic[T]):
    def __init__(self, reader: Reader, writer: Writer, route: Route[T],
                 connect: Connect[T]) -> None:
        self.reader = reader
        self.route = route
        self.connect = connect
        self.down = _Side(_connection(client_side=False), writer, self._client_failed)
        self.streams: dict[int, _Stream] = {}  # by client stream id
        self.upstreams: dict[T, _Upstream] = {}
        self.all_upstreams: list[_Upstream] = []
        self.client_gone = asyncio.Event()

    # -- the client side

    def _client_failed(self, reason: str) -> None:
        log.debug("route_h2: client connection failed: %s", reason)
        self.client_gone.set()

    async def run(self) -> None:
        self.down.flush()
        reading = asyncio.ensure_future(self._read_client())
        gone = asyncio.ensure_future(self.client_gone.wait())
        try:
            await asyncio.wait({reading, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reading, gone):
                task.cancel()
            await asyncio.gather(reading, gone, return_exceptions=True)

    async def _read_client(self) -> None:
        while True:
            try:
                data = await self.reader.read(READ_SIZE)
            except (OSError, EOFError) as exc:
                log.debug("route_h2: client read failed: %s", exc)
                return
            if not data:
                return
            try:
                events = self.down.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:  # h2 queued a GOAWAY for it
                log.info("route_h2: the client broke HTTP/2: %s; closed", exc)
                self.down.write()
                await self.down.drain()
                return
            for event in events:
                if isinstance(event, h2.events.ConnectionTerminated):
                    self.down.write()
                    return
                self._client_event(event)
            self.down.write()
            await self.down.drain()
            if self.down.failed:
                return

    def _client_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._new_stream(event)
            return
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            sid = getattr(event, "stream_id", 0)
            for waiting in ([self.streams[sid]] if sid in self.streams else
                            list(self.streams.values()) if not sid else []):
                self._pump_down(waiting)
            return
        sid = getattr(event, "stream_id", None)
        s = self.streams.get(sid) if sid is not None else None
        if isinstance(event, h2.events.DataReceived):
            assert sid is not None
            padding = event.flow_controlled_length - len(event.data)
            if s is None or s.done or s.client_ended:
                self._ack_client(event.flow_controlled_length, sid)
                return
            if padding:
                self._ack_client(padding, sid)
            s.to_up += event.data
            self._pump_up(s)
        elif s is None:
            return
        elif isinstance(event, h2.events.TrailersReceived):
            s.to_up_trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            s.client_ended = True
            self._pump_up(s)
        elif isinstance(event, h2.events.StreamReset):
            s.done = True
            up = s.up
            if up is not None and up.side is not None and s.up_sid is not None:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    up.side.conn.reset_stream(s.up_sid, event.error_code)
                up.side.flush()
            self._forget(s)

    def _ack_client(self, n: int, sid: int) -> None:
        if n:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.down.conn.acknowledge_received_data(n, sid)

    def _new_stream(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        assert sid is not None
        s = _Stream(sid, event.headers or [], event.stream_ended is not None)
        self.streams[sid] = s
        try:
            target = self.route(s.headers)
        except Exception:
            log.exception("route_h2: the routing decision failed; answered 502")
            self._refuse(s, "502 bridge router: no route")
            return
        up = self.upstreams.get(target)
        if up is None or up.lost:
            up = _Upstream(target)
            self.upstreams[target] = up
            self.all_upstreams.append(up)
            up.task = asyncio.ensure_future(self._run_upstream(up))
        s.up = up
        if len(up.waiting) >= QUEUE:
            self._reset_down(s, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        up.waiting.append(s)
        self._open_waiting(up)

    def _refuse(self, s: _Stream, text: str) -> None:
        """The router's own 502 for a stream with no response head yet."""
        body = (text + "\n").encode()
        conn = self.down.conn
        s.done = True
        try:
            fits = conn.local_flow_control_window(s.sid) >= len(body)
            conn.send_headers(s.sid, [(b":status", b"502"),
                                      (b"content-type", b"text/plain; charset=utf-8"),
                                      (b"content-length", str(len(body) if fits else 0).encode())],
                              end_stream=not fits)
            if fits:
                conn.send_data(s.sid, body, end_stream=True)
            if not s.client_ended:
                conn.reset_stream(s.sid, h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass
        self.down.flush()
        self._forget(s)

    def _reset_down(self, s: _Stream, code: int) -> None:
        s.done = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.down.conn.reset_stream(s.sid, code)
        self.down.flush()
        self._forget(s)

    def _forget(self, s: _Stream) -> None:
        self.streams.pop(s.sid, None)
        up = s.up
        if up is not None:
            if s.up_sid is not None:
                up.streams.pop(s.up_sid, None)
            with contextlib.suppress(ValueError):
                up.waiting.remove(s)
            if up.side is not None and not up.lost:
                self._open_waiting(up)

    def _maybe_done(self, s: _Stream) -> None:
        if s.down_end_sent and s.up_end_sent:
            self._forget(s)

    # -- the upstream side

    async def _run_upstream(self, up: _Upstream) -> None:
        try:
            reader, writer = await self.connect(up.target)  # type: ignore[arg-type]
        except Exception as exc:  # anything the opener raises: it did not open
            self._upstream_lost(up, f"connecting: {exc}")
            return
        up.reader = reader
        up.side = _Side(_connection(client_side=True), writer,
                        lambda reason: self._upstream_lost(up, reason))
        up.side.flush()
        if up.lost:  # every stream went away while it connected
            up.side.close()
            return
        self._open_waiting(up)
        while not up.lost:
            try:
                data = await reader.read(READ_SIZE)
            except (OSError, EOFError) as exc:
                self._upstream_lost(up, f"reading: {exc}")
                return
            if not data:
                self._upstream_lost(up, "closed")
                return
            try:
                events = up.side.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                up.side.write()
                self._upstream_lost(up, f"not HTTP/2: {exc}")
                return
            for event in events:
                if isinstance(event, h2.events.ConnectionTerminated):
                    self._upstream_goaway(up, event)
                    return
                self._upstream_event(up, event)
            self._open_waiting(up)
            up.side.write()
            self.down.flush()
            await up.side.drain()

    def _open_waiting(self, up: _Upstream) -> None:
        """Open the waiting streams that fit under the upstream's MAX_CONCURRENT_STREAMS."""
        if up.side is None or up.lost or not up.settled:
            return
        conn = up.side.conn
        room = conn.remote_settings.max_concurrent_streams
        while up.waiting and conn.open_outbound_streams < room:
            s = up.waiting.popleft()
            if s.done:
                continue
            up_sid = conn.get_next_available_stream_id()
            s.up_sid = up_sid
            up.streams[up_sid] = s
            ends = s.client_ended and not s.to_up and s.to_up_trailers is None
            conn.send_headers(up_sid, s.headers, end_stream=ends)
            s.up_end_sent = ends
            self._pump_up(s)
        up.side.flush()

    def _upstream_event(self, up: _Upstream, event: h2.events.Event) -> None:
        assert up.side is not None
        if isinstance(event, h2.events.RemoteSettingsChanged):
            up.settled = True
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            sid = getattr(event, "stream_id", 0)
            for waiting in ([up.streams[sid]] if sid in up.streams else
                            list(up.streams.values()) if not sid else []):
                self._pump_up(waiting)
            return
        sid = getattr(event, "stream_id", None)
        s = up.streams.get(sid) if sid is not None else None
        if isinstance(event, h2.events.DataReceived):
            assert sid is not None
            if s is None or s.done:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    up.side.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                return
            padding = event.flow_controlled_length - len(event.data)
            if padding:
                up.side.conn.acknowledge_received_data(padding, sid)
            s.to_down += event.data
            self._pump_down(s)
        elif s is None or s.done:
            return
        elif isinstance(event, (h2.events.ResponseReceived,
                                h2.events.InformationalResponseReceived)):
            final = isinstance(event, h2.events.ResponseReceived)
            ends = isinstance(event, h2.events.ResponseReceived) and event.stream_ended is not None
            try:
                self.down.conn.send_headers(s.sid, list(event.headers or []), end_stream=ends)
            except h2.exceptions.ProtocolError:
                return
            if final:
                s.head_sent = True
            if ends:
                s.up_ended = s.down_end_sent = True
                self._maybe_done(s)
        elif isinstance(event, h2.events.TrailersReceived):
            s.to_down_trailers = list(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            s.up_ended = True
            self._pump_down(s)
        elif isinstance(event, h2.events.StreamReset):
            self._reset_down(s, event.error_code)

    def _upstream_goaway(self, up: _Upstream, event: h2.events.ConnectionTerminated) -> None:
        last = event.last_stream_id or 0
        log.info("route_h2: %s sent GOAWAY (%s, last stream %d)", up.target, event.error_code,
                 last)
        for up_sid, s in list(up.streams.items()):
            if not s.done:
                self._reset_down(s, h2.errors.ErrorCodes.REFUSED_STREAM if up_sid > last
                                 else h2.errors.ErrorCodes.CANCEL)
        self._upstream_lost(up, "GOAWAY")

    def _upstream_lost(self, up: _Upstream, reason: str) -> None:
        """Every stream still relayed through `up` ends: a 502 where no response head went
        to the client yet, else a reset (CANCEL). New streams open a new connection."""
        if up.lost:
            return
        up.lost = True
        if self.upstreams.get(up.target) is up:  # type: ignore[arg-type]
            del self.upstreams[up.target]  # type: ignore[arg-type]
        streams = [s for s in (*up.streams.values(), *up.waiting) if not s.done]
        if streams:
            log.info("route_h2: %s failed (%s); %d stream(s) ended", up.target, reason,
                     len(streams))
        for s in streams:
            if s.head_sent:
                self._reset_down(s, h2.errors.ErrorCodes.CANCEL)
            else:
                self._refuse(s, f"502 bridge router: {up.target} failed")
        up.streams.clear()
        up.waiting.clear()
        if up.side is not None:
            up.side.close()
        self.down.flush()

    # -- moving DATA within the windows

    def _pump_up(self, s: _Stream) -> None:
        """What the client sent on `s`, to its upstream stream, as far as the window goes;
        acknowledged to the client once the upstream socket took it."""
        up = s.up
        if s.done or up is None or up.side is None or up.lost or s.up_sid is None:
            return
        sent, s.up_end_sent = _send_within_window(
            up.side.conn, s.up_sid, s.to_up, ended=s.client_ended,
            trailers=s.to_up_trailers, end_sent=s.up_end_sent)
        down, sid = self.down, s.sid
        up.side.flush(after=(lambda: self._acked(down, sid, sent)) if sent else None)
        self._maybe_done(s)

    def _pump_down(self, s: _Stream) -> None:
        """What the upstream sent on `s`, to the client, as far as the window goes; the
        upstream gets its acknowledgement once the client socket took it."""
        up = s.up
        if s.done or not s.head_sent or up is None or up.side is None or s.up_sid is None:
            return
        sent, s.down_end_sent = _send_within_window(
            self.down.conn, s.sid, s.to_down, ended=s.up_ended,
            trailers=s.to_down_trailers, end_sent=s.down_end_sent)
        side, up_sid = up.side, s.up_sid
        self.down.flush(after=(lambda: self._acked(side, up_sid, sent)) if sent else None)
        self._maybe_done(s)

    @staticmethod
    def _acked(side: _Side, sid: int, n: int) -> None:
        if side.failed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            side.conn.acknowledge_received_data(n, sid)
        side.flush()

    def close(self) -> None:
        for up in self.all_upstreams:
            up.lost = True
            if up.task is not None:
                up.task.cancel()
            if up.side is not None:
                up.side.close()
        self.down.close()


async def serve(reader: Reader, writer: Writer, route: Route[T], connect: Connect[T]) -> None:
    """Serve one accepted h2c client connection (it begins with the 24-byte preface) until
    it ends; every stream goes to the upstream `route` names, over a connection opened with
    `connect`. Never raises for what a peer does; closes the client connection and every
    upstream connection it opened."""
    relay: _Relay[T] = _Relay(reader, writer, route, connect)
    try:
        await relay.run()
    except (OSError, EOFError) as exc:
        log.debug("route_h2: client connection ended: %s", exc)
    finally:
        tasks: list[Any] = [up.task for up in relay.all_upstreams if up.task is not None]
        relay.close()
        await asyncio.gather(*tasks, return_exceptions=True)
