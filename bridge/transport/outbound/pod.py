"""The pod's side of outbound: TCP connections dialled by the sidecar (SSH direct-tcpip) and
name look-ups made with the pod's resolver (the sidecar's `resolve` commands)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

from sidecar import protocol

# The sidecar gives up a connect after 20s (sidecar.forwards.CONNECT_TIMEOUT); this bounds a
# stalled tunnel too, so a client never waits forever.
OPEN_TIMEOUT = 30.0
LOOKUP_TIMEOUT = 15.0
# Cluster addresses change rarely; a short cache keeps one look-up per name per burst.
CACHE_SECONDS = 5.0

GetConnection = Callable[[], "asyncssh.SSHClientConnection | None"]


class PodError(Exception):
    """The pod could not do it; str() is the reason (`Connection refused`, `timed out`)."""


class NoSuchName(PodError):
    pass


@dataclass
class _Cached:
    at: float
    value: list[str]


class Pod:
    def __init__(self, get_connection: GetConnection) -> None:
        self._get = get_connection
        self._cache: dict[tuple[str, str], _Cached] = {}

    def _conn(self) -> asyncssh.SSHClientConnection:
        conn = self._get()
        if conn is None or conn.is_closed():
            raise PodError("the tunnel to the proxy pod is down (bridge is reconnecting)")
        return conn

    async def open(self, host: str, port: int) -> tuple[asyncssh.SSHReader[bytes],
                                                         asyncssh.SSHWriter[bytes]]:
        """A TCP connection from the pod to host:port (a name resolves in the pod)."""
        conn = self._conn()
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                return await conn.open_connection(
                    host, port, encoding=None, window=protocol.FORWARD_WINDOW,
                    max_pktsize=protocol.FORWARD_MAX_PKTSIZE)
        except TimeoutError:
            raise PodError("timed out") from None
        except asyncssh.ChannelOpenError as e:
            # The sidecar says "cannot connect to HOST:PORT: REASON".
            raise PodError(e.reason.rpartition(": ")[2] or e.reason) from None
        except (asyncssh.Error, OSError) as e:
            raise PodError(f"tunnel error: {e}") from None

    async def resolve(self, name: str) -> list[str]:
        return await self._lookup(protocol.CMD_RESOLVE, name, "addresses")

    async def resolve_ptr(self, address: str) -> list[str]:
        return await self._lookup(protocol.CMD_RESOLVE_PTR, address, "names")

    async def _lookup(self, command: str, arg: str, field: str) -> list[str]:
        key = (command, arg.lower())
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit.at < CACHE_SECONDS:
            return hit.value
        conn = self._conn()
        try:
            result = await conn.run(f"{command} {arg}", check=False, timeout=LOOKUP_TIMEOUT)
        except asyncssh.TimeoutError:
            raise PodError("name look-up timed out") from None
        except (asyncssh.Error, OSError) as e:
            raise PodError(f"tunnel error: {e}") from None
        if result.exit_status == 127:
            raise PodError("the sidecar is too old to resolve names (no `resolve` command)")
        try:
            body = json.loads(str(result.stdout or ""))
        except ValueError:
            raise PodError("the sidecar's answer is not JSON") from None
        values = body.get(field) if isinstance(body, dict) else None
        if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
            self._cache[key] = _Cached(time.monotonic(), values)
            return values
        error = str(body.get("error", "no answer")) if isinstance(body, dict) else "no answer"
        if isinstance(body, dict) and body.get("kind") in ("nxdomain", "invalid"):
            raise NoSuchName(error)
        raise PodError(error)
