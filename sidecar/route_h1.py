"""HTTP/1.1 routed per request (h11): one client connection, each request relayed to the
upstream that a routing decision picks from the request's head.

A building block of the router (docs/design/cluster-keeps-serving.md, sections 5 and 7.1),
**not wired in yet**: nothing in the sidecar calls `serve`; a swap still hands whole
connections to the laptop (sidecar/forwards.py). What decides and what connects are the two
callables `serve` takes, so the lease model plugs in later without changing this module:

- `route(request) -> target`: the decision, from the request head alone (an `h11.Request`:
  method, target, and the fields with names lower-cased as h11 hands them over), e.g.
  "laptop" when the lease's header rules match, else "origin";
- `connect(target) -> (reader, writer)`: a byte stream to that target (a TCP connection to
  an origin pod; later an SSH channel to a laptop). Any exception means it did not open.

Not here yet (the router core's, work item 4): the open timeout and SUSPECT/AWAY laptops, a
pool of upstream connections shared between client connections (here each client connection
keeps its own idle upstream connections, one per target, for its next requests), idle
timeouts, and HTTP/2.

Per client connection: one `h11.Connection(SERVER)`; per upstream connection one
`h11.Connection(CLIENT)`. h11 does every byte of parsing and framing; this module only moves
events between them:

- each request is routed on its own when its head is complete, also on a keep-alive
  connection whose consecutive requests go to different upstreams;
- pipelined requests are answered one after another, in order (h11 pauses the client side
  after a complete request until its response is sent);
- bodies go as they come (`Data` by `Data`, chunked stays chunked, trailers ride on
  `EndOfMessage`); `Expect: 100-continue` and other 1xx answers are relayed;
- an upgrade (WebSocket) or CONNECT is routed by its request; once the upstream switches
  (101, or 2xx to CONNECT), what both h11 connections buffered past the switch goes first
  and the connection becomes a byte relay to that one upstream, each direction half-closed
  on its own;
- hop-by-hop fields (RFC 9110 section 7.6.1: `Connection`, the fields it names,
  `Keep-Alive`, `Proxy-Connection`) are the router's, not forwarded; an upgrade keeps
  `Connection: upgrade` and `Upgrade`, minus `h2c` (declined: cleartext HTTP/2 by Upgrade is
  deprecated, RFC 9113 section 3.1; the client goes on in HTTP/1.1, every request routed);
- a request h11 cannot parse is answered with h11's status hint (400, 431 for a head over
  64 KiB) and never routed; an upstream that cannot be reached, closes or breaks HTTP before
  a response head went out gives a 502, after it the client connection is closed. No retries.
- bounded buffers: the client is read (at most READ_SIZE at a time) only when h11 needs more
  to make the next event, and every write is drained before the next read, so a slow
  upstream or client holds the router to a socket buffer or so per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import h11

from sidecar import headerrules

log = logging.getLogger("sidecar")

READ_SIZE = 64 * 1024  # one read from either side, at most
MAX_HEAD = 64 * 1024  # a request or response head h11 buffers at most (431 for a client's)
LINGER_SECONDS = 1.0  # after a refusal: how long the rest of a request is read and dropped
LINGER_BYTES = 1024 * 1024  # ... and how much of it at most

# Fields of one hop (RFC 9110 section 7.6.1), never forwarded as they came.
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
                  b"http2-settings"})
# Named in `Connection` but never dropped: the message's framing and its target.
_KEEP = frozenset({b"content-length", b"transfer-encoding", b"host"})


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...

    def at_eof(self) -> bool: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...


T = TypeVar("T", bound=Hashable)  # what names an upstream: "laptop", "origin", a lease...
Route = Callable[[h11.Request], T]
Connect = Callable[[T], Awaitable[tuple[Reader, Writer]]]

Headers = Sequence[tuple[bytes, bytes]]


# --- the pure part: what goes upstream and downstream ---------------------------------------


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    """The comma-separated tokens of every `name` field, lower-cased."""
    return [t.strip().lower() for n, v in headers if n.lower() == name
            for t in v.split(b",") if t.strip()]


def _upgrade_protocol(token: bytes) -> bytes:
    return token.split(b"/", 1)[0].strip().lower()


def upstream_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """A request's fields as the router forwards them (the client's own spelling and order):
    hop-by-hop fields dropped; an upgrade other than h2c kept with `Connection: upgrade`;
    a `Host` added (empty) when an HTTP/1.0 client sent none, as HTTP/1.1 requires one."""
    named = set(_tokens(headers, b"connection"))
    out = [(n, v) for n, v in headers
           if n.lower() not in _HOP and (n.lower() not in named or n.lower() in _KEEP)]
    if b"upgrade" in named:
        offers = [v.strip() for n, v in headers if n.lower() == b"upgrade"
                  for v in v.split(b",") if v.strip()]
        offers = [v for v in offers if _upgrade_protocol(v) != b"h2c"]
        if offers:
            spelled = next(n for n, _ in headers if n.lower() == b"upgrade")
            out += [(b"Connection", b"upgrade"), (spelled, b", ".join(offers))]
    if not any(n.lower() == b"host" for n, _ in out):
        out.append((b"Host", b""))
    return out


def downstream_headers(status: int, headers: Headers) -> list[tuple[bytes, bytes]]:
    """A response's fields as the router relays them: hop-by-hop fields dropped (h11 adds
    `Connection: close` when the client connection ends after it), except on a 101, whose
    `Connection: upgrade` and `Upgrade` are the switch itself."""
    if status == 101:
        return list(headers)
    named = set(_tokens(headers, b"connection"))
    return [(n, v) for n, v in headers
            if n.lower() not in _HOP and (n.lower() not in named or n.lower() in _KEEP)]


def upstream_request(request: h11.Request) -> h11.Request:
    """The request the upstream gets (always HTTP/1.1: h11's client speaks nothing else)."""
    return h11.Request(method=request.method, target=request.target,
                       headers=upstream_headers(request.headers.raw_items()))


def refusal(status: int, text: str, *, close: bool) -> list[h11.Event]:
    """The router's own answer (400/431 for a request it cannot read, 502 for an upstream it
    cannot use): plain text, and `Connection: close` when the connection ends after it."""
    body = (text + "\n").encode("ascii", "replace")
    headers = [(b"Content-Type", b"text/plain; charset=utf-8"),
               (b"Content-Length", str(len(body)).encode())]
    if close:
        headers.append((b"Connection", b"close"))
    reason = http.HTTPStatus(status).phrase.encode("ascii")
    return [h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body),
            h11.EndOfMessage()]


def by_header_rules(rules: Sequence[headerrules.Rule], matched: T, otherwise: T) -> Route[T]:
    """The simplest decision: `matched` for a request whose fields satisfy every rule
    (`sidecar.headerrules`, design section 11), else `otherwise`. The lease set's decision
    (`protocol.choose`: several leases, their states) replaces it when the router is wired."""
    def route(request: h11.Request) -> T:
        return matched if headerrules.matches(rules, request.headers) else otherwise
    return route


# --- the I/O ------------------------------------------------------------------------------


class _ClientGone(Exception):
    """The client closed, reset or broke HTTP mid-request: the connection ends."""


class _UpstreamFailed(Exception):
    """The upstream refused, closed, reset or broke HTTP."""


class _Upstream:
    """One connection to a target, with its h11 client state."""

    def __init__(self, target: Hashable, reader: Reader, writer: Writer) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    def reusable(self) -> bool:
        return (self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE
                and not self.reader.at_eof())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.conn.send(event) or b"" for event in events)
        try:
            if data:
                self.writer.write(data)
            await self.writer.drain()
        except (OSError, EOFError) as exc:
            raise _UpstreamFailed(f"writing: {exc}") from exc

    async def next_event(self, before_read: Callable[[], Awaitable[None]]) -> h11.Event:
        """The next event from the upstream; `before_read` runs before it waits for more."""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _UpstreamFailed(f"not HTTP/1.1: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            await before_read()
            try:
                data = await self.reader.read(READ_SIZE)
            except (OSError, EOFError) as exc:
                raise _UpstreamFailed(f"reading: {exc}") from exc
            self.conn.receive_data(data)


class _Relay(Generic[T]):
    """One client connection: requests in, each to its upstream, responses back in order."""

    def __init__(self, reader: Reader, writer: Writer, route: Route[T],
                 connect: Connect[T]) -> None:
        self.reader = reader
        self.writer = writer
        self.route = route
        self.connect = connect
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.idle: dict[T, _Upstream] = {}  # upstream connections kept for the next
        self.head_sent = False  # a response head of the current exchange went to the client
        self.held: list[bytes] = []  # bytes for the client not written yet (see _hold)

    # -- the client side

    async def _client_event(self) -> h11.Event:
        """The next event from the client, reading only when h11 needs more."""
        while True:
            event = self.client.next_event()  # RemoteProtocolError: the caller decides
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.reader.read(READ_SIZE)
            except (OSError, EOFError) as exc:
                raise _ClientGone(f"reading: {exc}") from exc
            self.client.receive_data(data)

    async def _to_client(self, *events: h11.Event) -> None:
        for event in events:
            self._hold(event)
        await self._flush()

    def _hold(self, event: h11.Event) -> None:
        """`event` for the client, held until the next flush: a response whose pieces came
        in one read goes out in one write (bounded: the relay flushes before each read)."""
        try:
            data = self.client.send(event)
        except h11.LocalProtocolError as exc:
            raise _ClientGone(f"cannot relay: {exc}") from exc
        if data:
            self.held.append(data)

    async def _flush(self) -> None:
        data, self.held = b"".join(self.held), []
        try:
            if data:
                self.writer.write(data)
            await self.writer.drain()
        except (OSError, EOFError) as exc:
            raise _ClientGone(f"writing: {exc}") from exc

    async def _refuse(self, status: int, text: str, *, close: bool) -> None:
        """The router's own answer, if the client can still take one; when the connection
        ends after it with the request not read to its end, a bounded lingering close."""
        with contextlib.suppress(_ClientGone):
            await self._to_client(*refusal(status, text, close=close))
        if close and self.client.their_state is not h11.DONE:
            await self._linger()

    # -- one connection

    async def run(self) -> None:
        while True:
            try:
                event = await self._client_event()
            except h11.RemoteProtocolError as exc:
                # the answer names no byte of the request (h11's message quotes them): the
                # log has it, escaped by the sidecar's formatter
                status = exc.error_status_hint
                log.info("route_h1: a request it cannot read: %s; answered %d", exc, status)
                await self._refuse(status, f"{status} bridge router: a request it cannot read",
                                   close=True)
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed: the client is done
            if not await self._exchange(event):
                return
            self.client.start_next_cycle()

    async def _linger(self) -> None:
        """After an answer to a request that was not read to its end: the client's sending
        side is read and dropped for a moment (bounded), so that closing with unread bytes
        does not reset the connection before the client read the answer (RFC 9112 9.6: on a
        real network the reset can overtake it; Linux on loopback delivers it either way)."""
        with contextlib.suppress(Exception):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                dropped = 0
                while dropped < LINGER_BYTES and (data := await self.reader.read(READ_SIZE)):
                    dropped += len(data)

    def close(self) -> None:
        for up in self.idle.values():
            up.close()
        self.idle.clear()
        with contextlib.suppress(Exception):
            self.writer.close()

    async def _upstream(self, target: T) -> _Upstream:
        up = self.idle.pop(target, None)
        if up is not None and up.reusable():
            return up
        if up is not None:
            up.close()
        try:
            reader, writer = await self.connect(target)
        except Exception as exc:  # anything the opener raises: it did not open
            raise _UpstreamFailed(f"connecting: {exc}") from exc
        return _Upstream(target, reader, writer)

    async def _exchange(self, request: h11.Request) -> bool:
        """One request and its response (or a switch to a byte relay); whether the client
        connection goes on with its next request."""
        self.head_sent = False
        try:
            target = self.route(request)
        except Exception:
            log.exception("route_h1: the routing decision failed; answered 502")
            await self._refuse(502, "502 bridge router: no route", close=True)
            return False
        try:
            up = await self._upstream(target)
        except _UpstreamFailed as exc:
            log.info("route_h1: %s: %s; answered 502", target, exc)
            keep = self._request_complete()
            await self._refuse(502, f"502 bridge router: {target} cannot be reached",
                               close=not keep)
            return keep
        try:
            outcome = await self._relay(up, request)
        except _UpstreamFailed as exc:
            up.close()
            if self.head_sent:
                with contextlib.suppress(_ClientGone):
                    await self._flush()  # what came before the failure
                log.info("route_h1: %s failed mid-response (%s); closed the client", target,
                         exc)
            else:
                log.info("route_h1: %s failed (%s); answered 502", target, exc)
                await self._refuse(502, f"502 bridge router: {target} failed", close=True)
            return False
        except (_ClientGone, h11.RemoteProtocolError) as exc:
            log.debug("route_h1: the client went away mid-request: %s", exc)
            up.close()
            return False
        except BaseException:
            up.close()
            raise
        if outcome == "switched":
            await self._tunnel(up)
            return False
        keep = (self.client.our_state is h11.DONE and self.client.their_state is h11.DONE)
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
            self.idle[target] = up
        else:
            up.close()
        return keep

    def _request_complete(self) -> bool:
        """Whether the request ends in what h11 already holds (no body left to read): only
        then can the connection go on after an answer given without reading it."""
        with contextlib.suppress(h11.RemoteProtocolError):
            while self.client.their_state is h11.SEND_BODY:
                event = self.client.next_event()
                if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                    return False
        return self.client.their_state is h11.DONE

    async def _relay(self, up: _Upstream, request: h11.Request) -> str:
        """The request to `up` and its response back; "done" or "switched"."""
        head = upstream_request(request)
        first = self.client.next_event()  # what h11 holds already: no read
        if isinstance(first, h11.EndOfMessage):  # no body (most requests): no second task
            await up.send(head, _end(first))
            complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            complete.set_result(None)
            return await self._response(up, complete)
        await up.send(head)
        body = asyncio.ensure_future(self._request_body(up, first))
        response = asyncio.ensure_future(self._response(up, body))
        try:
            pending: set[asyncio.Future[Any]] = {body, response}
            while response in pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                if body in done and body.exception() is not None:
                    raise body.exception()  # type: ignore[misc]
            return response.result()  # type: ignore[return-value]
        finally:
            for task in (body, response):
                if not task.done():
                    task.cancel()
            await asyncio.gather(body, response, return_exceptions=True)

    async def _request_body(self, up: _Upstream, first: object) -> None:
        """The client's body to `up` as it comes, until its end (`first`: the event already
        taken from h11, or NEED_DATA). An upstream that stops reading (it answered early and
        closed) ends this quietly: the response decides."""
        while True:
            event = first if first is not h11.NEED_DATA else await self._client_event()
            first = h11.NEED_DATA
            if isinstance(event, h11.Data):
                out: h11.Event = h11.Data(data=event.data)
            elif isinstance(event, h11.EndOfMessage):
                out = _end(event)
            else:  # ConnectionClosed mid-request (h11 raises for a short body)
                raise _ClientGone(f"unexpected {type(event).__name__}")
            try:
                await up.send(out)
            except _UpstreamFailed:
                return
            if isinstance(event, h11.EndOfMessage):
                return

    async def _response(self, up: _Upstream, body: asyncio.Future[None]) -> str:
        while True:
            event = await up.next_event(self._flush)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    await body  # the request is complete: h11 switches only then
                    self.head_sent = True
                    await self._to_client(h11.InformationalResponse(
                        status_code=101, headers=event.headers.raw_items(),
                        reason=event.reason))
                    return "switched"
                self._hold(h11.InformationalResponse(
                    status_code=event.status_code, reason=event.reason,
                    headers=downstream_headers(event.status_code, event.headers.raw_items())))
            elif isinstance(event, h11.Response):
                self.head_sent = True
                self._hold(h11.Response(
                    status_code=event.status_code, reason=event.reason,
                    headers=downstream_headers(event.status_code, event.headers.raw_items())))
                if up.conn.their_state is h11.SWITCHED_PROTOCOL:  # a 2xx to CONNECT
                    await body
                    await self._flush()
                    return "switched"
            elif isinstance(event, h11.Data):
                self._hold(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                http10 = self.client.their_http_version == b"1.0"
                trailers = [] if http10 else event.headers.raw_items()
                await self._to_client(h11.EndOfMessage(headers=trailers))
                return "done"
            else:  # ConnectionClosed before the response ended
                raise _UpstreamFailed("closed before the response ended")

    async def _tunnel(self, up: _Upstream) -> None:
        """After a switch: bytes both ways, h11's buffered bytes first, until both ends
        closed their sending side (or one failed)."""
        to_up, client_closed = self.client.trailing_data
        to_client, up_closed = up.conn.trailing_data
        tasks = [asyncio.ensure_future(_pipe(to_up, client_closed, self.reader, up.writer)),
                 asyncio.ensure_future(_pipe(to_client, up_closed, up.reader, self.writer))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            up.close()


def _end(event: h11.EndOfMessage) -> h11.EndOfMessage:
    """A request's end as it goes upstream: trailers come only with a chunked body, which
    goes upstream chunked too."""
    return h11.EndOfMessage(headers=event.headers.raw_items())


async def _pipe(first: bytes, closed: bool, src: Reader, dst: Writer) -> None:
    """`first`, then what `src` sends, to `dst`; then its end (a half-close)."""
    if first:
        dst.write(first)
        await dst.drain()
    if not closed:
        while data := await src.read(READ_SIZE):
            dst.write(data)
            await dst.drain()
    if dst.can_write_eof():
        dst.write_eof()


async def serve(reader: Reader, writer: Writer, route: Route[T], connect: Connect[T]) -> None:
    """Serve one accepted client connection until it ends; every request goes to the
    upstream `route` names, opened with `connect`. Never raises for what a peer does; closes
    the client connection and every upstream connection it opened."""
    relay: _Relay[T] = _Relay(reader, writer, route, connect)
    try:
        await relay.run()
    except (_ClientGone, OSError, EOFError) as exc:
        log.debug("route_h1: client connection ended: %s", exc)
    finally:
        relay.close()
