"""The SSH client to the sidecar: pinned host key, remote forwards, the pod's environment.

Trust: the sidecar prints its freshly generated host key to its log
(``host-key: ssh-ed25519 AAAA...``); the agent reads the log through the API and
pins exactly that key (`known_hosts` holds nothing else: no trust-on-first-use,
no ~/.ssh files, no agent, no passwords, no GSS). The client authenticates with a
fresh ed25519 key whose public half the proxy pod was given.

Tuning (measured with `scripts/tune-tunnel`; figures in the commit that set these):
- cipher: AES-GCM first (`aes128-gcm@openssh.com`): 0.6x the CPU per byte of
  chacha20-poly1305 in asyncssh on CPUs with AES instructions, ~1.8x the
  throughput; aes256-gcm costs the same, aes128-ctr+hmac 0.7x;
- window / packet size on the forwarded channels: asyncssh's connection-level
  ``window=`` / ``max_pktsize=`` apply to sessions it opens, not to channels the
  server opens for a remote forward; those take theirs from the listener that
  `SSHClientConnection.create_server` creates, so `forward` passes them there.
  Each side's receive window governs one direction, which is why the sidecar sets
  the same values on the channels it opens. Packets above 32 KiB cost more CPU
  per byte in asyncssh (see the constants);
- TCP_NODELAY on the local sockets (asyncssh's forwarder sets it): without it a
  small-message round trip took 44 ms instead of 0.3 ms;
- socket reads: asyncio's 256 KiB per call; 64 KiB measured the same, 1 MiB worse.

Each forwarded connection is proven before the cluster's bytes go into it (issue 19 item 6):
once connected to the local port, the socket that accepted the connection must belong to this
user (`bridge.local.ports.accepting_socket`); another user's listener, bound there since the
last check of the ports, gets a connection that is closed before a byte was sent, and
`on_foreign` is told (the session ends). Cost: one sock_diag lookup, ~50 us a connection
(measured next to ~250 us for the connect itself). Off Linux (macOS) the owner of a socket is
not told this way: connections are forwarded unproven, as before, and the checks of the
ports (before the swap, then once a second) are Linux-only as well (`ports.inspectable`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncssh
from asyncssh.forward import SSHForwarder

from bridge.errors import BridgeError
from bridge.local import ports as localports
from sidecar import protocol

ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
)
# Both ends use the same flow control on forwarded channels; the figures behind it are in
# sidecar/protocol.py.
FORWARD_WINDOW = protocol.FORWARD_WINDOW  # receive window of each forwarded channel
FORWARD_MAX_PKTSIZE = protocol.FORWARD_MAX_PKTSIZE  # largest SSH data packet we accept on it
SESSION_WINDOW = 2 * 1024 * 1024
KEEPALIVE_COUNT_MAX = protocol.KEEPALIVE_COUNT_MAX  # as the sidecar counts them
USERNAME = "bridge"
COMMAND_TIMEOUT = 30.0


def new_client_key() -> asyncssh.SSHKey:
    """A fresh ed25519 key for one session."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="bridge")
    return key


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The OpenSSH public-key line of `key`: ``ssh-ed25519 AAAA... bridge``."""
    return key.export_public_key("openssh").decode("ascii").strip()


def parse_host_key(pod_log: str) -> str | None:
    """The host key the sidecar printed (the last ``host-key:`` line), or None."""
    found = None
    for line in pod_log.splitlines():
        if line.startswith(protocol.HOST_KEY_LOG_PREFIX):
            found = line[len(protocol.HOST_KEY_LOG_PREFIX) :].strip() or found
    return found


def check_version(reply: dict[str, Any]) -> None:
    """BridgeError unless the sidecar's `version` reply speaks our protocol."""
    theirs = reply.get("protocol")
    if theirs != protocol.PROTOCOL_VERSION:
        sidecar = reply.get("sidecar", "unknown")
        raise BridgeError(
            f"the sidecar speaks protocol {theirs} (sidecar {sidecar}) but this bridge speaks "
            f"protocol {protocol.PROTOCOL_VERSION}; use a matching --sidecar-image "
            f"(default {protocol.DEFAULT_IMAGE}) or a matching bridge"
        )


class ForwardRefused(BridgeError):
    """The sidecar refused a remote forward: not a port it may bind, or the port is taken (by
    an earlier connection it has not yet dropped, for one)."""


class Tunnel:
    """One SSH connection to a sidecar. Use `Tunnel.connect`."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        where: str,
        forward_window: int = FORWARD_WINDOW,
        forward_max_pktsize: int = FORWARD_MAX_PKTSIZE,
    ) -> None:
        self._conn = conn
        self.where = where
        self._window = forward_window
        self._max_pktsize = forward_max_pktsize
        self._listeners: dict[int, asyncssh.SSHListener] = {}
        # time.monotonic() of the last connection a remote forward brought (0: none yet): the
        # hand-back's proof from the data path that no node still routes to the proxy
        self.last_forwarded = 0.0

    @classmethod
    async def connect(
        cls,
        *,
        host: str,
        port: int,
        client_key: asyncssh.SSHKey,
        host_key: str,
        tunnel: object | None = None,
        keepalive_interval: float = 5.0,
        timeout: float = 15.0,  # noqa: ASYNC109 - the agreed interface; bounds the whole connect
        ciphers: Sequence[str] = ENCRYPTION_ALGS,
        forward_window: int = FORWARD_WINDOW,
        forward_max_pktsize: int = FORWARD_MAX_PKTSIZE,
    ) -> Tunnel:
        """SSH to the sidecar at host:port (over `tunnel`, e.g. a PortForwarder, if given).

        `ciphers`, `forward_window` and `forward_max_pktsize` exist for measuring
        (scripts/tune-tunnel, make bench); the defaults are the tuned values.
        """
        target = getattr(tunnel, "target", None)  # PortForwarder: "pod NS/NAME"
        where = f"the sidecar in {target}" if target else f"the sidecar at {host}:{port}"
        try:
            pinned = asyncssh.import_public_key(host_key)
        except (asyncssh.KeyImportError, ValueError):
            raise BridgeError(
                f"the host key {where} printed is not an OpenSSH public key: {host_key[:60]!r}"
            ) from None
        options: dict[str, Any] = {}
        if tunnel is not None:
            options["tunnel"] = tunnel
        try:
            async with asyncio.timeout(timeout):
                conn = await asyncssh.connect(
                    host,
                    port,
                    username=USERNAME,
                    client_keys=[client_key],
                    known_hosts=([pinned], [], []),
                    config=None,
                    agent_path=None,
                    agent_forwarding=False,
                    password=None,
                    kbdint_auth=False,
                    gss_host=None,
                    x509_trusted_certs=None,
                    preferred_auth="publickey",
                    encryption_algs=list(ciphers),
                    compression_algs=None,
                    keepalive_interval=keepalive_interval,
                    keepalive_count_max=KEEPALIVE_COUNT_MAX,
                    window=SESSION_WINDOW,
                    connect_timeout=timeout,
                    **options,
                )
        except TimeoutError:
            raise BridgeError(f"SSH to {where} timed out after {timeout:g}s") from None
        except BridgeError:
            raise  # the port-forward's own reason
        except asyncssh.HostKeyNotVerifiable:
            raise BridgeError(
                f"{where} presented a host key other than the one in its log; "
                "refusing to connect (possible interception)"
            ) from None
        except asyncssh.PermissionDenied:
            raise BridgeError(f"{where} refused this session's SSH key") from None
        except (asyncssh.Error, OSError) as exc:
            raise BridgeError(f"SSH to {where} failed: {_reason(exc)}") from None
        return cls(conn, where, forward_window, forward_max_pktsize)

    async def version(self) -> dict[str, Any]:
        """The sidecar's `version` reply; BridgeError if its protocol is not ours."""
        reply = await self._command(protocol.CMD_VERSION)
        check_version(reply)
        return reply

    async def env(self) -> dict[str, str]:
        """The proxy container's environment, as the sidecar sees it."""
        reply = await self._command(protocol.CMD_ENV)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in reply.items()):
            raise BridgeError(f"{self.where} sent an environment that is not text")
        return {str(k): str(v) for k, v in reply.items()}

    async def withdraw(self) -> None:
        """Ask the sidecar to report not Ready while keeping every forward (the hand-back)."""
        await self._command(protocol.CMD_WITHDRAW)

    async def forward(self, remote_port: int, local_host: str, local_port: int, *,
                      on_foreign: Callable[[str], None] | None = None) -> None:
        """Remote forward: connections to the pod's `remote_port` reach local_host:local_port,
        each only once the socket that accepted it is proven this user's (`open_local`);
        `on_foreign` is told (one line) when another user's was found there."""
        prove = localports.inspectable()

        def session_factory(_orig_host: str, _orig_port: int) -> Any:
            self.last_forwarded = time.monotonic()
            return open_local(local_host, local_port, prove=prove, on_foreign=on_foreign)

        try:
            listener = await self._conn.create_server(
                session_factory,
                "",
                remote_port,
                window=self._window,
                max_pktsize=self._max_pktsize,
            )
        except asyncssh.ChannelListenError:
            raise ForwardRefused(
                f"{self.where} refused to forward port {remote_port} (not one of the pod's "
                "forwardable ports, or the port is taken in the pod; the sidecar log says which)"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            raise BridgeError(f"forwarding port {remote_port} failed: {_reason(exc)}") from None
        self._listeners[remote_port] = listener

    @property
    def connection(self) -> asyncssh.SSHClientConnection:
        """The SSH connection, for features that open their own channels over it (e.g.
        direct-tcpip for an outbound proxy, SFTP); closing it is this Tunnel's job."""
        return self._conn

    def is_closed(self) -> bool:
        """True once the SSH connection is lost or closed."""
        return bool(self._conn.is_closed())

    async def wait_closed(self) -> None:
        """Return when the SSH connection is lost or closed."""
        await self._conn.wait_closed()

    async def close(self) -> None:
        """Stop the forwards and close the connection."""
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        self._conn.close()
        await self._conn.wait_closed()

    async def _command(self, command: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                result = await self._conn.run(command, check=False, request_pty=False)
        except TimeoutError:
            raise BridgeError(
                f"{self.where} did not answer `{command}` within {COMMAND_TIMEOUT:g}s"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            raise BridgeError(f"`{command}` on {self.where} failed: {_reason(exc)}") from None
        stdout = result.stdout if isinstance(result.stdout, str) else ""
        if result.exit_status != 0:
            stderr = result.stderr if isinstance(result.stderr, str) else ""
            detail = stderr.strip().splitlines()[-1:] or [f"exit status {result.exit_status}"]
            raise BridgeError(f"`{command}` on {self.where} failed: {detail[0]}")
        try:
            reply = json.loads(stdout)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise BridgeError(f"{self.where} answered `{command}` with something not JSON")
        return reply


async def open_local(host: str, port: int, *, prove: bool,
                     on_foreign: Callable[[str], None] | None = None) -> SSHForwarder:
    """What asyncssh's `forward_connection` does (connect, then pass the channel's bytes
    both ways), with a proof in between when `prove`: the socket that accepted the
    connection must be this user's (`bridge.local.ports.accepting_socket`), or the
    connection is closed before a byte of the cluster's was sent and the channel refused (the
    client in the cluster sees its connection closed)."""
    loop = asyncio.get_running_loop()
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        address: tuple[Any, ...] = (host, port)
    except ValueError:  # a name (bridge forwards to addresses; tune-tunnel may not)
        try:
            family, _, _, _, address = (await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP))[0]
        except (OSError, IndexError) as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            str(exc) or "no address") from None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        if prove:
            verdict = localports.accepting_socket(sock.getsockname()[:2], sock.getpeername()[:2])
            if not verdict.ok:
                raise _Refused(verdict)
        _, forwarder = await loop.create_connection(SSHForwarder, sock=sock)
    except _Refused as refused:
        _drop(sock)
        if refused.verdict.foreign and on_foreign is not None:
            on_foreign(refused.verdict.line)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                        refused.verdict.line) from None
    except OSError as exc:
        sock.close()
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
    except BaseException:
        sock.close()
        raise
    return SSHForwarder(forwarder)


class _Refused(Exception):
    def __init__(self, verdict: localports.PeerVerdict) -> None:
        super().__init__(verdict.line)
        self.verdict = verdict


def _drop(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): whoever accepted it gets no byte and no orderly end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
