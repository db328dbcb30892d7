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
    """The pod could not do it; str() is the reason in words (`Connection refused`, `timed
    out`), `reason` the sidecar's reason code (protocol.REASON_*) that callers act on."""

    reason = protocol.REASON_FAILED


class Refused(PodError):
    reason = protocol.REASON_REFUSED


class TimedOut(PodError):
    reason = protocol.REASON_TIMEOUT


class NetworkUnreachable(PodError):
    reason = protocol.REASON_NET_UNREACHABLE


class HostUnreachable(PodError):
    reason = protocol.REASON_HOST_UNREACHABLE


class NoSuchName(PodError):
    reason = protocol.REASON_NXDOMAIN


class NotAllowed(PodError):
    """The sidecar does not open it (outbound connections off for this session)."""

    reason = protocol.REASON_NOT_ALLOWED


_BY_REASON: dict[str, type[PodError]] = {cls.reason: cls for cls in (
    Refused, TimedOut, NetworkUnreachable, HostUnreachable, NoSuchName, NotAllowed)}
_BY_REASON[protocol.REASON_INVALID] = NoSuchName  # resolve: not a name, so no such name


def error_for(reason: str | None, text: str) -> PodError:
    """The one mapping from the sidecar's reason code to an error (unknown or none: PodError;
    a sidecar from before the codes: read from its text, see `reason_from_text`)."""
    code = reason if reason is not None else reason_from_text(text)
    return _BY_REASON.get(code, PodError)(text)


def reason_from_text(text: str) -> str:
    """For a sidecar before protocol.REASON_* (its strerror text only): the code it means."""
    low = text.lower()
    if "refused" in low:
        return protocol.REASON_REFUSED
    if "timed out" in low or "timeout" in low:
        return protocol.REASON_TIMEOUT
    if "network is unreachable" in low:
        return protocol.REASON_NET_UNREACHABLE
    if "no route" in low or "unreachable" in low or "host is down" in low:
        return protocol.REASON_HOST_UNREACHABLE
    if ("not known" in low or "no address" in low or "nodename" in low
            or "name resolution" in low):
        return protocol.REASON_NXDOMAIN
    return protocol.REASON_FAILED


def open_error(e: asyncssh.ChannelOpenError) -> PodError:
    """Why the sidecar did not open a direct-tcpip channel, as an error."""
    if e.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
        return NotAllowed(e.reason)
    if e.code != asyncssh.OPEN_CONNECT_FAILED:
        return PodError(e.reason)
    code, text = protocol.open_reason(e.reason)
    return error_for(code, text)


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
            raise TimedOut("timed out") from None
        except asyncssh.ChannelOpenError as e:
            raise open_error(e) from None
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
            raise TimedOut("name look-up timed out") from None
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
        if not isinstance(body, dict):
            raise PodError("no answer")
        kind = body.get("kind")
        raise error_for(kind if isinstance(kind, str) else protocol.REASON_FAILED,
                        str(body.get("error", "no answer")))
