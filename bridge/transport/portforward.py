"""Port-forward to a pod through the Kubernetes API server, natively on asyncio.

One websocket per stream: ``GET /api/v1/namespaces/NS/pods/POD/portforward?ports=P``
upgraded with the subprotocol ``v4.channel.k8s.io``. Every binary frame starts with
a channel byte (0 = data, 1 = error for the one port we ask for), the rest is
payload. The first two bytes the server sends on each channel are the port number
(little-endian), which we strip. Anything arriving on the error channel (nothing
listening, pod gone...) ends the stream with a BridgeError carrying the server's
words. The v4 protocol has no half-close: a stream ends when the websocket closes.

`WebSocketTransport` presents a websocket as an `asyncio.Transport`, so any
asyncio protocol runs over it: asyncssh (through `PortForwarder.create_connection`,
the shape asyncssh's ``tunnel=`` option calls) or asyncio streams (`open`).
Backpressure both ways: outgoing bytes are queued and coalesced into large frames
by one writer task that awaits the websocket's drain, and the protocol is paused
above `WRITE_HIGH` queued bytes; incoming frames are only pulled from aiohttp
while the protocol has not paused reading, and aiohttp stops reading the socket
when its own small queue fills, so a slow reader slows the sender down.

Authentication reuses the `kubernetes.aio` ApiClient's Configuration, so the
kubeconfig's CA, client certificate, bearer token (refreshed by the
configuration's hook, as for exec plugins), ``tls-server-name`` and proxy apply
exactly as for every other API call.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.errors import BridgeError
from bridge.kube import credentials, netconfig

SUBPROTOCOL = "v4.channel.k8s.io"
CHANNEL_DATA = 0
CHANNEL_ERROR = 1
PORT_PREFIX = 2  # bytes of port number that open each channel from the server

# Tuned with scripts/tune-tunnel: 32-128 KiB frames measured alike, 256 KiB and 1 MiB
# slowed the agent -> cluster direction (the server relays a frame only once it has
# all of it, so big frames pipeline worse).
MAX_FRAME = 64 * 1024  # largest payload we put in one outgoing frame
WRITE_HIGH = 1024 * 1024  # pause the protocol above this many queued bytes...
WRITE_LOW = 256 * 1024  # ...and resume it at or below this many
CLOSE_TIMEOUT = 2.0  # seconds to wait for the server's close frame


class WebSocketTransport(asyncio.Transport):
    """An asyncio Transport carrying one port's bytes over a v4.channel.k8s.io websocket."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        protocol: asyncio.BaseProtocol,
        describe: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._ws = ws
        self._protocol = protocol
        self._describe = describe
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._high = WRITE_HIGH
        self._low = WRITE_LOW
        self._protocol_paused = False
        self._closing = False
        self._lost = False
        self._prefix_left = {CHANNEL_DATA: PORT_PREFIX, CHANNEL_ERROR: PORT_PREFIX}
        self._can_read = asyncio.Event()
        self._can_read.set()
        self._wakeup = asyncio.Event()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Tell the protocol the connection is made and start moving bytes."""
        self._protocol.connection_made(self)
        self._reader = self._loop.create_task(self._read_loop())
        self._writer = self._loop.create_task(self._write_loop())

    # -- asyncio.Transport -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost:
            return
        if not data:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self._wakeup.set()
        if not self._protocol_paused and self._queued > self._high:
            self._protocol_paused = True
            self._call_protocol("pause_writing")

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("the v4.channel.k8s.io port-forward protocol has no half-close")

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = WRITE_HIGH if high is None else high
        self._low = min(self._high, (self._high // 4) if low is None else low)

    def is_reading(self) -> bool:
        return self._can_read.is_set() and not self._closing

    def pause_reading(self) -> None:
        self._can_read.clear()

    def resume_reading(self) -> None:
        self._can_read.set()

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is queued, then close the websocket."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._can_read.clear()
        self._wakeup.set()

    def abort(self) -> None:
        """Drop what is queued and close now."""
        if self._lost:
            return
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._finish(None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    async def wait_closed(self) -> None:
        """Wait until the transport has told its protocol the connection is lost."""
        await asyncio.shield(self._closed)

    # -- moving bytes -------------------------------------------------------------------

    async def _read_loop(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                if not self._can_read.is_set():
                    await self._can_read.wait()
                    if self._closing:
                        return
                msg = await self._ws.receive()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    error = self._frame(msg.data)
                    if error is not None:
                        break
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    error = BridgeError(f"{self._describe} failed: {msg.data}")
                    break
                elif msg.type in _CLOSED_TYPES:
                    break
                else:
                    reason = f"unexpected {msg.type.name} frame"
                    error = BridgeError(f"{self._describe} failed: {reason}")
                    break
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - any failure ends the stream with a reason
            error = BridgeError(f"{self._describe} failed: {exc or type(exc).__name__}")
        if self._lost:
            return
        if error is None and not self._closing:
            self._call_protocol("eof_received")
        self._finish(error)

    def _frame(self, data: bytes) -> BaseException | None:
        if not data:
            return None
        channel = data[0]
        start = 1
        left = self._prefix_left.get(channel)
        if left is None:
            return None  # a channel we did not ask for: ignore, as the protocol allows
        if left:
            taken = min(left, len(data) - 1)
            self._prefix_left[channel] = left - taken
            start += taken
        if start >= len(data):
            return None
        if channel == CHANNEL_ERROR:
            reason = data[start:].decode("utf-8", "replace").strip()
            return BridgeError(f"{self._describe} failed: {reason}")
        if not self._closing:
            self._protocol.data_received(data[start:])  # type: ignore[attr-defined]
        return None

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                frame = self._take_frame()
                await self._ws.send_bytes(frame)
                if self._protocol_paused and self._queued <= self._low:
                    self._protocol_paused = False
                    self._call_protocol("resume_writing")
            await self._close_ws()
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - any failure ends the stream with a reason
            self._finish(BridgeError(f"{self._describe} failed: {exc or type(exc).__name__}"))
            return
        self._finish(None)

    def _take_frame(self) -> bytes:
        """Channel byte plus up to MAX_FRAME queued bytes, coalescing small writes."""
        parts = [bytes((CHANNEL_DATA,))]
        size = 0
        while self._queue and size < MAX_FRAME:
            chunk = self._queue.popleft()
            room = MAX_FRAME - size
            if len(chunk) > room:
                self._queue.appendleft(chunk[room:])
                chunk = chunk[:room]
            parts.append(chunk)
            size += len(chunk)
        self._queued -= size
        return b"".join(parts)

    async def _close_ws(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._ws.close()
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass

    def _finish(self, exc: BaseException | None) -> None:
        """Stop both loops, close the websocket and tell the protocol, once."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not None and task is not current:
                task.cancel()
        if not self._ws.closed:
            self._closer = self._loop.create_task(self._close_ws())
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            if not self._closed.done():
                self._closed.set_result(None)

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except Exception as exc:  # noqa: BLE001 - a failing protocol ends the stream
            self._finish(exc)


class PortForwardRefused(BridgeError):
    """The API server refused the port-forward's upgrade; `status` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_CLOSED_TYPES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


@dataclass
class PortForwardStream:
    """One forwarded connection as asyncio streams."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def close(self) -> None:
        """Close the stream; an error that already ended it was reported by the reader."""
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (BridgeError, ConnectionError):
            pass


class PortForwarder:
    """Opens streams to one pod's ports through the API server of `api_client`.

    Also an asyncssh ``tunnel=`` object: ``asyncssh.connect(pod, port, tunnel=pf)``
    runs SSH over a port-forward to `port`. Close with `close()` (or ``async with``).
    """

    def __init__(self, api_client: Any, namespace: str, pod: str) -> None:
        self._config = api_client.configuration
        self._default_headers: dict[str, str] = dict(getattr(api_client, "default_headers", {}))
        self.namespace = namespace
        self.pod = pod
        self._session: aiohttp.ClientSession | None = None
        self._proxy = netconfig.proxy_of(self._config, os.environ)  # [realbeh]

    async def __aenter__(self) -> PortForwarder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session; open streams are closed with it."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def target(self) -> str:
        """What this forwards to, for messages: ``pod NS/NAME``."""
        return f"pod {self.namespace}/{self.pod}"

    def url(self, port: int) -> str:
        host = str(self._config.host).rstrip("/")
        ns, pod = quote(self.namespace, safe=""), quote(self.pod, safe="")
        return f"{host}/api/v1/namespaces/{ns}/pods/{pod}/portforward?ports={port}"

    def describe(self, port: int) -> str:
        return f"port-forward to {self.target} port {port}"

    async def open(self, port: int) -> PortForwardStream:
        """A stream to `port` of the pod."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(lambda: protocol, self.pod, port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return PortForwardStream(reader, writer)

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
    ) -> tuple[WebSocketTransport, asyncio.BaseProtocol]:
        """Open a port-forward to `port` and run `protocol_factory()` over it.

        `host` is ignored (the pod is fixed); the signature is what asyncssh's
        ``tunnel=`` option calls.
        """
        ws = await self._connect(port)
        protocol = protocol_factory()
        transport = WebSocketTransport(
            ws, protocol, self.describe(port), {"peername": (f"{self.namespace}/{self.pod}", port)}
        )
        transport.start()
        return transport, protocol

    async def _connect(self, port: int) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self._connect_once(port)
        except PortForwardRefused as e:
            # [realbeh] a 401 with an exec-plugin token: run the plugin again, try once more
            source = credentials.installed(self._config)
            if e.status != 401 or source is None:
                raise
            source.invalidate()
            return await self._connect_once(port)

    async def _connect_once(self, port: int) -> aiohttp.ClientWebSocketResponse:
        describe = self.describe(port)
        session = self._session_for_config()
        headers = dict(self._default_headers)
        headers.update(await _auth_headers(self._config))
        kwargs: dict[str, Any] = {}
        if self._config.tls_server_name:
            kwargs["server_hostname"] = self._config.tls_server_name
        proxy = netconfig.request_proxy(self._proxy)  # [realbeh] socks goes in the connector
        if proxy:
            kwargs["proxy"] = proxy
            if getattr(self._config, "proxy_headers", None):
                kwargs["proxy_headers"] = self._config.proxy_headers
        try:
            return await session.ws_connect(
                self.url(port),
                protocols=(SUBPROTOCOL,),
                headers=headers,
                autoping=True,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
                **kwargs,
            )
        except aiohttp.WSServerHandshakeError as exc:
            reason = _handshake_reason(exc, self.namespace)
            raise PortForwardRefused(f"{describe} failed: {reason}", exc.status) from None
        except aiohttp.ClientSSLError as exc:
            raise BridgeError(
                f"{describe} failed: TLS error talking to the API server {self._config.host}: "
                f"{exc}"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BridgeError(
                f"{describe} failed: cannot reach the API server {self._config.host}: "
                f"{exc or type(exc).__name__}"
            ) from None

    def _session_for_config(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # [realbeh] same TLS/proxy choice as REST; trust_env off (no netrc, no second
            # reading of proxy variables)
            connector = netconfig.connector(ssl_context(self._config), self._proxy,
                                            force_close=True)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session


def ssl_context(config: Any) -> ssl.SSLContext:
    """The TLS settings of a kubernetes Configuration (see bridge.kube.netconfig)."""
    return netconfig.ssl_context(config)  # [realbeh] one TLS policy for REST and port-forward


async def _auth_headers(config: Any) -> dict[str, str]:
    """The headers the ApiClient would authenticate with (token refreshed by its hook)."""
    headers: dict[str, str] = {}
    for setting in (await config.auth_settings()).values():
        if setting.get("in") == "header" and setting.get("value"):
            headers[setting["key"]] = setting["value"]
    return headers


def _handshake_reason(exc: aiohttp.WSServerHandshakeError, namespace: str) -> str:
    status = exc.status
    if status == 401:
        return "the API server rejected the credentials (401 Unauthorized)"
    if status == 403:
        # [realbeh] the websocket upgrade is a GET: authorised as `get` (and also `create`
        # from Kubernetes 1.35, AuthorizePodWebsocketUpgradeCreatePermission)
        return (
            f"forbidden: you may not port-forward to pods in namespace {namespace} "
            "(403 Forbidden; this needs get and, from Kubernetes 1.35, create on "
            "pods/portforward; `bridge doctor` lists what is missing)"
        )
    if status == 404:
        return "the pod does not exist (404 Not Found)"
    if status in (400, 500):
        return f"the API server refused it ({status}: {exc.message}); is the pod running?"
    return f"the API server answered {status} {exc.message}"
