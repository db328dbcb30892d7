"""The session's local proxy: one port on 127.0.0.1 speaking SOCKS5 (first byte 5) and HTTP
(CONNECT and absolute-form forwarding), both behind the session's credentials; plus the
`--forward` listeners. Every connection it accepts is carried by the pod (see pod.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from bridge.transport.outbound import httpproxy, socks5
from bridge.transport.outbound.pod import NoSuchName, Pod, PodError, TimedOut

log = logging.getLogger("bridge.transport.outbound")

HANDSHAKE_TIMEOUT = 30.0
LINGER = 5.0  # after a RESOLVE answer, how long to wait for the client to close first
CHUNK = 256 * 1024
HIGH_WATER = 1024 * 1024


async def _pipe(reader: Any, writer: Any) -> None:
    """Copy until EOF, then half-close; flow control through drain(). (asyncio's and
    asyncssh's stream classes share these methods but no base class.)"""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
    except (OSError, ConnectionError, Exception) as e:  # a reset on either side ends the pipe
        log.debug("pipe ended: %s", e)


async def splice(local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter,
                 remote_r: Any, remote_w: Any) -> None:
    """Both directions until both ended, then close both ends."""
    try:
        await asyncio.gather(_pipe(local_r, remote_w), _pipe(remote_r, local_w))
    finally:
        remote_w.close()
        local_w.close()


class Proxy:
    """The accept loop's handlers; `credentials` are (user, password)."""

    def __init__(self, pod: Pod, user: str, password: str,
                 note: Callable[[str], None] | None = None) -> None:
        self.pod = pod
        self.user = user
        self.password = password
        self._note = note or (lambda _msg: None)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- accept -------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            writer.transport.set_write_buffer_limits(high=HIGH_WATER)
            first = await asyncio.wait_for(reader.read(1), HANDSHAKE_TIMEOUT)
            if not first:
                return
            if first[0] == socks5.VERSION:
                await self._socks(first, reader, writer)
            else:
                await self._http(first, reader, writer)
        except (TimeoutError, ConnectionError, OSError, socks5.Malformed,
                httpproxy.BadRequest) as e:
            log.debug("proxy connection ended: %s", e)
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    # -- SOCKS5 -------------------------------------------------------------------------
    async def _socks(self, buf: bytes, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            greeting, buf = await _read_msg(reader, buf, socks5.parse_greeting)
            method = socks5.choose_method(greeting)
            writer.write(bytes([socks5.VERSION, method]))
            if method == socks5.METHOD_NONE_ACCEPTABLE:
                return
            creds, buf = await _read_msg(reader, buf, socks5.parse_user_pass)
            ok = socks5.credentials_match(creds, (self.user.encode(), self.password.encode()))
            writer.write(socks5.auth_reply(ok))
            if not ok:
                log.info("refused a SOCKS client with wrong credentials")
                return
            request, buf = await _read_msg(reader, buf, socks5.parse_request)
        if request.command == socks5.CMD_CONNECT:
            await self._socks_connect(request, buf, reader, writer)
        elif request.command == socks5.CMD_RESOLVE:
            await self._socks_resolve(request, reader, writer)
        elif request.command == socks5.CMD_RESOLVE_PTR:
            await self._socks_resolve_ptr(request, reader, writer)
        else:
            writer.write(socks5.reply(socks5.REP_COMMAND_NOT_SUPPORTED))

    def _bound(self, request: socks5.Request) -> str:
        return "::" if request.atyp == socks5.ATYP_IPV6 else "0.0.0.0"

    async def _socks_connect(self, request: socks5.Request, rest: bytes,
                             reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            remote_r, remote_w = await self.pod.open(request.host, request.port)
        except PodError as e:
            log.info("connect to %s:%d from the pod failed: %s", request.host, request.port, e)
            writer.write(socks5.reply(socks5.failure_for_reason(e.reason), self._bound(request)))
            await writer.drain()
            return
        writer.write(socks5.reply(socks5.REP_SUCCEEDED, self._bound(request)))
        if rest:
            remote_w.write(rest)
        await splice(reader, writer, remote_r, remote_w)

    async def _socks_resolve(self, request: socks5.Request, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        if request.atyp != socks5.ATYP_DOMAIN:  # an address resolves to itself
            writer.write(socks5.reply(socks5.REP_SUCCEEDED, request.host))
        else:
            try:
                addresses = await self.pod.resolve(request.host)
            except NoSuchName as e:
                log.info("resolving %s in the pod: %s", request.host, e)
                writer.write(socks5.reply(socks5.REP_HOST_UNREACHABLE))
            except PodError as e:
                log.info("resolving %s in the pod failed: %s", request.host, e)
                writer.write(socks5.reply(socks5.REP_GENERAL_FAILURE))
            else:
                # torsocks asks for IPv4 only, and reads exactly 4 address bytes.
                v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
                pick = (v4 or addresses)[0]
                writer.write(socks5.reply(socks5.REP_SUCCEEDED, pick))
        await _linger(reader, writer)

    async def _socks_resolve_ptr(self, request: socks5.Request, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        try:
            names = await self.pod.resolve_ptr(request.host)
        except PodError as e:
            log.info("reverse look-up of %s in the pod: %s", request.host, e)
            writer.write(socks5.reply(socks5.REP_HOST_UNREACHABLE))
        else:
            writer.write(socks5.name_reply(names[0]))
        await _linger(reader, writer)

    # -- HTTP ---------------------------------------------------------------------------
    async def _http(self, buf: bytes, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            head, buf = await _read_msg(reader, buf, httpproxy.parse_head)
        if not httpproxy.authorized(head, self.user, self.password):
            writer.write(httpproxy.response(
                407, "Proxy Authentication Required", "bridge proxy: credentials required\n",
                'Proxy-Authenticate: Basic realm="bridge"\r\n'))
            await writer.drain()
            return
        try:
            if head.method == "CONNECT":
                host, port = httpproxy.connect_target(head)
                first = b""
            else:
                host, port, first = httpproxy.forward_target(head)
        except httpproxy.BadRequest as e:
            writer.write(httpproxy.response(400, "Bad Request", f"bridge proxy: {e}\n"))
            await writer.drain()
            return
        try:
            remote_r, remote_w = await self.pod.open(host, port)
        except PodError as e:
            status = (504, "Gateway Timeout") if isinstance(e, TimedOut) else (
                502, "Bad Gateway")
            writer.write(httpproxy.response(
                *status, f"bridge proxy: cannot connect to {host}:{port} from the pod: {e}\n"))
            await writer.drain()
            return
        if head.method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        else:
            remote_w.write(first)
        if buf:
            remote_w.write(buf)
        await splice(reader, writer, remote_r, remote_w)


T = TypeVar("T")


async def _read_msg(reader: asyncio.StreamReader, buf: bytes,
                    parse: Callable[[bytes], tuple[T, int] | None]) -> tuple[T, bytes]:
    while True:
        got = parse(buf)
        if got is not None:
            value, used = got
            return value, buf[used:]
        more = await reader.read(4096)
        if not more:
            raise ConnectionError("client closed during the handshake")
        buf += more


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send the answer, then let the client close first: closing with its request padding
    unread would reset the connection, perhaps before it read the answer."""
    await writer.drain()
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(LINGER):
            while await reader.read(4096):
                pass


async def forward_one(pod: Pod, host: str, port: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    """A `--forward` connection: straight to host:port from the pod."""
    try:
        remote_r, remote_w = await pod.open(host, port)
    except PodError as e:
        log.info("forward to %s:%d failed in the pod: %s", host, port, e)
        writer.close()
        return
    await splice(reader, writer, remote_r, remote_w)
