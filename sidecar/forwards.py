"""TCP forwarding I/O: sockets on one side, SSH channels on the other.

A `Pipe` joins one TCP socket to one SSH channel with flow control both ways
(a full socket pauses the channel, so its window stops growing; a full channel
pauses the socket). Remote forwards listen on every interface; direct-tcpip
connects wherever the pod's resolver and routes lead.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh

from sidecar import listen, protocol, resolve

log = logging.getLogger("sidecar")

# Socket write buffer before the channel is paused; large enough to keep a fast
# link busy, small enough to bound memory per connection.
SOCKET_HIGH_WATER = 1024 * 1024
CHANNEL_HIGH_WATER = 1024 * 1024
CONNECT_TIMEOUT = 20.0


def tune_socket(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Tally:
    """Counts open pipes, so shutdown can wait for them to drain. A tally made with a
    `parent` (one connection's, within the sidecar's) counts into it too."""

    def __init__(self, parent: Tally | None = None) -> None:
        self.open = 0
        self._parent = parent
        self._idle = asyncio.Event()
        self._idle.set()

    def opened(self) -> None:
        self.open += 1
        self._idle.clear()
        if self._parent is not None:
            self._parent.opened()

    def closed(self) -> None:
        self.open -= 1
        if self.open == 0:
            self._idle.set()
        if self._parent is not None:
            self._parent.closed()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class Pipe:
    """One forwarded TCP connection: a socket end and a channel end.

    It counts as open in the Tally until both ends are fully closed (the socket's
    connection_lost and the channel's close handshake), so a shutdown that waits for
    the Tally never cuts a channel close in flight.
    """

    def __init__(self, label: str, tally: Tally) -> None:
        self.label = label
        self._tally = tally
        self.sock: asyncio.Transport | None = None
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.sock_eof = False
        self.chan_eof = False
        self.to_channel = 0
        self.to_socket = 0
        self.early: list[bytes] = []
        self._closed = False
        self._sock_gone = False
        self._chan_gone = False
        self._counted = True
        tally.opened()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- socket -> channel
    def from_socket(self, data: bytes) -> None:
        self.to_channel += len(data)
        if self.chan is not None:
            self.chan.write(data)
        else:  # read before the channel opened: kept for it, never dropped (see channel_open)
            self.early.append(data)

    def channel_open(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        """The channel exists: it gets what the socket sent meanwhile, and its EOF. The socket
        end is paused until now, but Python before 3.11.4 (Debian bookworm's 3.11.2) ignores a
        pause_reading() made in connection_made, so the socket may have been read already."""
        self.chan = chan
        for data in self.early:
            chan.write(data)
        self.early.clear()
        if self.sock_eof:
            chan.write_eof()

    def socket_eof(self) -> bool:
        self.sock_eof = True
        if self.chan is not None:
            try:
                self.chan.write_eof()
            except (OSError, asyncssh.Error) as exc:  # the channel closed under us
                self.close(str(exc))
                return False
        if self.chan_eof:
            self.close()
            return False
        return True

    def socket_lost(self, exc: Exception | None) -> None:
        self._sock_gone = True
        self.close(str(exc) if exc else "")
        self._settle()

    # -- channel -> socket
    def from_channel(self, data: bytes) -> None:
        self.to_socket += len(data)
        if self.sock is not None:
            self.sock.write(data)

    def channel_eof(self) -> bool:
        self.chan_eof = True
        if self.sock is not None and not self.sock.is_closing() and self.sock.can_write_eof():
            try:
                self.sock.write_eof()
            except OSError as exc:
                # The peer reset the socket and asyncio has not seen it yet (ENOTCONN). Left
                # to propagate, this would reach asyncssh's packet loop and close the whole SSH
                # connection, every forward of the session with it; it ends only this pipe.
                self.close(str(exc))
                return False
        if self.sock_eof:
            self.close()
            return False
        return True

    def channel_lost(self, exc: Exception | None) -> None:
        self._chan_gone = True
        self.close(str(exc) if exc else "")
        self._settle()

    def close(self, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if self.sock is not None:
            self.sock.close()
        if self.chan is not None:
            self.chan.close()
        suffix = f": {reason}" if reason else ""
        log.info(
            "%s closed (%d bytes to the SSH client, %d bytes from it)%s",
            self.label,
            self.to_channel,
            self.to_socket,
            suffix,
        )
        self._settle()

    def _settle(self) -> None:
        sock_done = self.sock is None or self._sock_gone
        chan_done = self.chan is None or self._chan_gone
        if self._closed and self._counted and sock_done and chan_done:
            self._counted = False
            self._tally.closed()


class SocketEnd(asyncio.Protocol):
    def __init__(self, pipe: Pipe, start_paused: bool = False) -> None:
        self._pipe = pipe
        self._start_paused = start_paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        tune_socket(transport)
        transport.set_write_buffer_limits(high=SOCKET_HIGH_WATER)
        if self._start_paused:
            transport.pause_reading()
        self._pipe.sock = transport

    def data_received(self, data: bytes) -> None:
        self._pipe.from_socket(data)

    def eof_received(self) -> bool:
        return self._pipe.socket_eof()

    def pause_writing(self) -> None:
        if self._pipe.chan is not None:
            self._pipe.chan.pause_reading()

    def resume_writing(self) -> None:
        if self._pipe.chan is not None:
            self._pipe.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pipe.socket_lost(exc)


class ChannelEnd(asyncssh.SSHTCPSession[bytes]):
    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe

    def connection_made(self, chan: Any) -> None:
        if self._pipe.closed:  # the socket went away while the channel was opening
            chan.close()
            return
        chan.set_write_buffer_limits(high=CHANNEL_HIGH_WATER)
        self._pipe.channel_open(chan)
        # The socket end starts paused until there is a channel to carry what it reads (a
        # server's greeting, an early EOF); from here on the pipe can take it.
        sock = self._pipe.sock
        if sock is not None and not sock.is_closing():
            sock.resume_reading()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._pipe.from_channel(data)

    def eof_received(self) -> bool:
        return self._pipe.channel_eof()

    def pause_writing(self) -> None:
        if self._pipe.sock is not None:
            self._pipe.sock.pause_reading()

    def resume_writing(self) -> None:
        if self._pipe.sock is not None:
            self._pipe.sock.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pipe.channel_lost(exc)


# ---------------------------------------------------------------- remote forwards


class BindError(OSError):
    """Binding a forward port failed; str() is one line for the log."""


def bind_error_text(port: int, exc: OSError) -> str:
    reason = listen.error_text(exc)
    if exc.errno == errno.EACCES and port < 1024:
        hint = (
            f"ports below 1024 need the pod sysctl net.ipv4.ip_unprivileged_port_start<={port}"
        )
    elif exc.errno == errno.EADDRINUSE:
        hint = "another process in the pod already listens on it"
    else:
        hint = "check the pod's network"
    return f"cannot listen on port {port} (all interfaces): {reason}; {hint}"


def bind_all_interfaces(port: int) -> list[socket.socket]:
    """Listening sockets for a remote forward on every interface; raises BindError."""
    try:
        return listen.all_interfaces(port)
    except OSError as exc:
        error = BindError(bind_error_text(port, exc))
        error.errno = exc.errno
        raise error from None


class RemoteForward(asyncssh.SSHListener):
    """A remote forward the sidecar listens for itself (asyncssh's own listener
    binds only the host the client named and uses default channel windows)."""

    def __init__(
        self,
        conn: asyncssh.SSHServerConnection,
        listen_host: str,
        port: int,
        label: str,
        tally: Tally,
        on_close: Callable[[], None],
    ) -> None:
        super().__init__()
        self._conn = conn
        self._listen_host = listen_host
        self._port = port
        self._label = label
        self._tally = tally
        self._on_close = on_close
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self, socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        try:
            for sock in socks:
                server = await loop.create_server(
                    self._accept, sock=sock, backlog=listen.LISTEN_BACKLOG
                )
                self._servers.append(server)
        except BaseException:
            for sock in socks:
                sock.close()
            self.close()
            raise

    def get_port(self) -> int:
        return self._port

    def _accept(self) -> asyncio.Protocol:
        if self._tally.open >= protocol.MAX_FORWARDED_CONNECTIONS:
            return _Refused(f"{self._label} port {self._port}")
        pipe = Pipe(f"{self._label} port {self._port}", self._tally)
        return _Accepted(pipe, self)

    def tunnel(self, pipe: Pipe, peer: tuple[str, int]) -> None:
        pipe.label = f"{self._label} port {self._port} from {hostport(*peer)}"
        task = asyncio.get_running_loop().create_task(self._open_channel(pipe, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_channel(self, pipe: Pipe, peer: tuple[str, int]) -> None:
        try:
            await self._conn.create_connection(
                lambda: ChannelEnd(pipe),
                self._listen_host,
                self._port,
                peer[0],
                peer[1],
                window=protocol.FORWARD_WINDOW,
                max_pktsize=protocol.FORWARD_MAX_PKTSIZE,
            )
        except (asyncssh.ChannelOpenError, asyncssh.Error, OSError) as exc:
            pipe.close(f"client refused the forwarded connection: {exc}")
            return
        if pipe.sock is not None and not pipe.sock.is_closing():
            pipe.sock.resume_reading()

    def close(self) -> None:
        """Stop listening now (the port is free at once); open connections go on."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        self._on_close()

    async def wait_closed(self) -> None:
        # Deliberately does not wait for open connections (Python 3.12's
        # Server.wait_closed would); the listening sockets are closed already.
        return


class _Accepted(SocketEnd):
    def __init__(self, pipe: Pipe, forward: RemoteForward) -> None:
        super().__init__(pipe, start_paused=True)
        self._forward = forward

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self._forward.tunnel(self._pipe, (str(peer[0]), int(peer[1])))


class _Refused(asyncio.Protocol):
    """A connection over the limit of forwarded connections: closed at once."""

    def __init__(self, label: str) -> None:
        self._label = label

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        log.info("%s connection refused: %d forwarded connections open already", self._label,
                 protocol.MAX_FORWARDED_CONNECTIONS)
        transport.close()


# ---------------------------------------------------------------- direct-tcpip


_CONNECT_REASONS = {
    errno.ECONNREFUSED: protocol.REASON_REFUSED,
    errno.ETIMEDOUT: protocol.REASON_TIMEOUT,
    errno.ENETUNREACH: protocol.REASON_NET_UNREACHABLE,
    errno.EHOSTUNREACH: protocol.REASON_HOST_UNREACHABLE,
    errno.EHOSTDOWN: protocol.REASON_HOST_UNREACHABLE,
}


def connect_reason(exc: BaseException) -> str:
    """The reason code (protocol.REASON_*) of a connect that failed: by errno, the name
    look-up's own code for a gaierror, `failed` for the rest."""
    if isinstance(exc, TimeoutError):
        return protocol.REASON_TIMEOUT
    if isinstance(exc, socket.gaierror):
        return resolve.error_kind(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return _CONNECT_REASONS.get(exc.errno, protocol.REASON_FAILED)
    return protocol.REASON_FAILED


def direct_connection(
    conn: asyncssh.SSHServerConnection, dest_host: str, dest_port: int, label: str, tally: Tally
) -> tuple[asyncssh.SSHTCPChannel[bytes], Awaitable[asyncssh.SSHTCPSession[bytes]]]:
    """Channel and session for a direct-tcpip open: connect to dest with the pod's resolver."""
    chan = conn.create_tcp_channel(
        window=protocol.FORWARD_WINDOW, max_pktsize=protocol.FORWARD_MAX_PKTSIZE
    )

    async def connect() -> asyncssh.SSHTCPSession[bytes]:
        pipe = Pipe(f"{label} direct-tcpip to {hostport(dest_host, dest_port)}", tally)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: SocketEnd(pipe, start_paused=True), dest_host, dest_port
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            message = protocol.open_failure(connect_reason(exc), hostport(dest_host, dest_port),
                                            listen.error_text(exc))
            pipe.close(message)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, message) from None
        return ChannelEnd(pipe)

    return chan, connect()
