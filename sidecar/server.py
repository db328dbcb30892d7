"""The SSH server: authentication, forwards, commands, and a graceful shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from sidecar import (
    commands,
    files,
    forwards,
    health,
    listen,
    protocol,
    resolve,  # outbound (issue 10)
)
from sidecar.ports import Claim, PortRegistry, refusal_message
from sidecar.settings import Settings

log = logging.getLogger("sidecar")

LOGIN_TIMEOUT = protocol.LOGIN_TIMEOUT_SECONDS


def escape_text(text: str) -> str:
    """`text` with every control or other non-printable character as an escape (`\\n`,
    `\\x1b`...): a log line can never hold a second line (a forged `host-key:` line) or a
    terminal escape, whatever a peer sent."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class EscapingFormatter(logging.Formatter):
    """Log lines with control characters escaped (peer text: disconnect reasons, user names,
    commands, errors), so the pod log has one line per record and nothing but the sidecar's
    own `host-key:` announcement starts with that prefix."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_text(super().format(record))
SHUTDOWN_REASON = "bridge sidecar is shutting down (SIGTERM)"


@dataclass
class State:
    """Everything the per-connection handlers share."""

    settings: Settings
    environ: Mapping[str, str]
    registry: PortRegistry
    tally: forwards.Tally = field(default_factory=forwards.Tally)
    clients: set[SidecarServer] = field(default_factory=set)
    listeners: set[forwards.RemoteForward] = field(default_factory=set)
    shutting_down: bool = False
    preauth: int = 0  # connections not (yet) authenticated
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


class CommandSession(asyncssh.SSHServerSession[str]):
    """A session channel: runs one of the fixed commands, refuses everything else."""

    def __init__(self, state: State, label: str, on_close: Any = None) -> None:
        self._state = state
        self._label = label
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._result: commands.Result | None = None
        self._on_close = on_close
        self._lookup: tuple[str, str] | None = None  # outbound (issue 10)
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        log.info("%s pty refused", self._label)
        return False

    def shell_requested(self) -> bool:
        log.info("%s shell refused", self._label)
        self._result = commands.refusal("an interactive shell")
        return True

    def exec_requested(self, command: str) -> bool:
        self._lookup = resolve.parse(command)  # outbound (issue 10): answered asynchronously
        if self._lookup is not None:
            return True
        self._result = commands.run(command, self._state.environ)
        if command.strip() == protocol.CMD_WITHDRAW:
            self._state.registry.withdraw()
        verdict = "ok" if self._result.exit_status == 0 else "refused (unknown command)"
        shown = command if len(command) <= 80 else command[:77] + "..."
        log.info("%s command %r %s", self._label, shown, verdict)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        log.info("%s subsystem %r refused", self._label, subsystem)
        self._result = commands.refusal(f"the {subsystem!r} subsystem")
        return True

    def session_started(self) -> None:
        chan = self._chan
        if self._lookup is not None and chan is not None:  # outbound (issue 10)
            task = asyncio.get_running_loop().create_task(self._answer(chan, *self._lookup))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        result = self._result
        if chan is None or result is None:
            return
        if result.stdout:
            chan.write(result.stdout)
        if result.stderr:
            chan.write_stderr(result.stderr)
        chan.exit(result.exit_status)


    async def _answer(self, chan: Any, kind: str, arg: str) -> None:  # outbound (issue 10)
        out, status = await resolve.answer(kind, arg)
        if not chan.is_closing():
            chan.write(out)
            chan.exit(status)


class SidecarServer(asyncssh.SSHServer):
    """One instance per SSH connection."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._id = next(state.ids)
        self.label = f"conn {self._id}"
        self._conn: asyncssh.SSHServerConnection | None = None
        self._lost = False
        self._preauth = False  # counted in state.preauth
        self._authed = False
        self._sessions = 0
        self._direct = forwards.Tally(state.tally)  # this connection's direct-tcpip pipes

    # -- connection lifecycle
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.label = f"conn {self._id} ({forwards.hostport(str(peer[0]), int(peer[1]))})"
        log.info("%s opened", self.label)
        if self._state.shutting_down:
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, SHUTDOWN_REASON)
            return
        if self._state.preauth >= protocol.MAX_PREAUTH_CONNECTIONS:
            log.info("%s refused: %d connections are already logging in", self.label,
                     self._state.preauth)
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections")
            return
        self._state.preauth += 1
        self._preauth = True

    def _end_preauth(self) -> None:
        if self._preauth:
            self._preauth = False
            self._state.preauth -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._end_preauth()
        self._state.clients.discard(self)
        freed = self._state.registry.detach(self)
        reason = f": {exc}" if exc else ""
        ports = f"; freed ports {', '.join(map(str, freed))}" if freed else ""
        log.info("%s closed%s%s", self.label, reason, ports)

    def disconnect(self, reason: str) -> None:
        if self._conn is not None and not self._lost:
            self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)

    # -- authentication: only the one authorized key, any user name
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = key.public_data == self._state.settings.authorized_key.public_data
        if not ok:
            log.info("%s rejected key %s", self.label, fingerprint(key))
        return ok

    def auth_completed(self) -> None:
        self._end_preauth()
        self._authed = True
        self._state.clients.add(self)
        self._state.registry.attach(self)
        log.info("%s authenticated with key %s", self.label, fingerprint(
            self._state.settings.authorized_key))

    # -- sessions (commands)
    def session_requested(self) -> asyncssh.SSHServerSession[str] | bool:
        if self._state.shutting_down or not self._authed:
            return False
        if self._sessions >= protocol.MAX_SESSIONS_PER_CONNECTION:
            log.info("%s session refused: %d open already", self.label, self._sessions)
            return False
        self._sessions += 1

        def closed() -> None:
            self._sessions -= 1

        session = CommandSession(self._state, self.label, closed)
        return files.session_for(session, self._state.settings.mounts, self.label)  # issue 15

    # -- remote forwards
    async def server_requested(self, listen_host: str, listen_port: int) -> Any:
        state = self._state
        claim = state.registry.claim(self, listen_port)
        if claim is not Claim.GRANTED:
            log.info(
                "%s remote forward %s refused: %s",
                self.label,
                forwards.hostport(listen_host, listen_port),
                refusal_message(claim, listen_port, state.registry.allowed),
            )
            return False
        assert self._conn is not None
        listener: forwards.RemoteForward | None = None

        def released() -> None:
            if state.registry.release(self, listen_port):
                log.info("%s remote forward port %d released", self.label, listen_port)
            if listener is not None:
                state.listeners.discard(listener)

        try:
            socks = forwards.bind_all_interfaces(listen_port)
            listener = forwards.RemoteForward(
                self._conn, listen_host, listen_port, self.label, state.tally, released
            )
            await listener.start(socks)
        except OSError as exc:
            state.registry.release(self, listen_port)
            log.info("%s remote forward port %d refused: %s", self.label, listen_port, exc)
            return False
        if self._lost or state.shutting_down:
            listener.close()
            return False
        state.listeners.add(listener)
        log.info(
            "%s remote forward port %d bound on all interfaces (asked for %s)",
            self.label,
            listen_port,
            listen_host or "''",
        )
        return listener

    # -- local forwards (direct-tcpip)
    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self._state.shutting_down:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, SHUTDOWN_REASON)
        if not self._authed:  # only a connection authenticated with the session key
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "not authenticated")
        if not self._state.settings.direct_tcpip:
            log.info("%s direct-tcpip to %s refused: outbound connections are off", self.label,
                     forwards.hostport(dest_host, dest_port))
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "outbound connections are off for this session")
        if self._direct.open >= protocol.MAX_DIRECT_PER_CONNECTION or \
                self._state.tally.open >= protocol.MAX_FORWARDED_CONNECTIONS:
            log.info("%s direct-tcpip refused: too many open connections", self.label)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE,
                                            "too many open connections")
        assert self._conn is not None
        return forwards.direct_connection(
            self._conn, dest_host, dest_port, self.label, self._direct
        )


def _encryption_algs() -> list[str]:
    supported = {alg.decode() for alg in asyncssh.encryption.get_encryption_algs()}
    return [alg for alg in protocol.PREFERRED_CIPHERS if alg in supported]


async def serve(
    settings: Settings,
    environ: Mapping[str, str],
    stop: asyncio.Event | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); return the exit status."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    state = State(settings=settings, environ=dict(environ), registry=PortRegistry(settings.ports))
    host_key = asyncssh.generate_private_key("ssh-ed25519")

    try:
        health_servers = await health.start(settings.health_port, state.registry)
    except OSError as exc:
        print(
            f"sidecar: cannot listen for health checks on port {settings.health_port}: "
            f"{listen.error_text(exc)}; nothing was started",
            file=sys.stderr,
        )
        return 1
    try:
        ssh_server = await asyncssh.create_server(
            lambda: SidecarServer(state),
            settings.bind,
            settings.ssh_port,
            server_host_keys=[host_key],
            allow_pty=True,  # so CommandSession.pty_requested logs and refuses it
            x11_forwarding=False,
            agent_forwarding=False,
            encryption_algs=_encryption_algs(),
            keepalive_interval=settings.keepalive_seconds,
            keepalive_count_max=protocol.KEEPALIVE_COUNT_MAX,
            login_timeout=LOGIN_TIMEOUT,
            reuse_address=True,
        )
    except OSError as exc:
        for server in health_servers:
            server.close()
        print(
            "sidecar: cannot listen for SSH on "
            f"{forwards.hostport(settings.bind, settings.ssh_port)}: "
            f"{listen.error_text(exc)}; nothing was started",
            file=sys.stderr,
        )
        return 1

    public = host_key.export_public_key("openssh").decode().strip()
    print(f"{protocol.HOST_KEY_LOG_PREFIX}{public}", flush=True)
    allowed = ", ".join(str(p) for p in sorted(settings.ports)) or "none"
    log.info(
        "listening for SSH on %s, health on port %d, forwardable ports: %s",
        forwards.hostport(settings.bind, settings.ssh_port),
        settings.health_port,
        allowed,
    )

    await stop.wait()
    await shutdown(state, ssh_server, health_servers)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
    return 0


async def shutdown(
    state: State, ssh_server: asyncssh.SSHAcceptor, health_servers: list[asyncio.AbstractServer]
) -> None:
    """Stop accepting, drain open forwarded connections (bounded), disconnect clients."""
    log.info("shutting down: no new connections or forwards")
    state.shutting_down = True
    state.registry.close()  # /ready answers 503 from now on
    ssh_server.close()
    for listener in list(state.listeners):
        listener.close()
    drain = state.settings.drain_seconds
    if state.tally.open:
        log.info("waiting up to %.1fs for %d open connection(s)", drain, state.tally.open)
        try:
            async with asyncio.timeout(drain):
                await state.tally.wait_idle()
        except TimeoutError:
            log.info("%d connection(s) still open after %.1fs; closing", state.tally.open, drain)
    for client in list(state.clients):
        client.disconnect(SHUTDOWN_REASON)
    # Give the disconnect messages a moment to leave the sockets.
    await asyncio.sleep(0.05)
    for server in health_servers:
        server.close()
    log.info("stopped")
