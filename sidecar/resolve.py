"""Name look-ups in the pod, for the agent's outbound proxy (issue 10).

`resolve NAME` and `resolve-ptr ADDRESS` are exec commands like `env`: they print one JSON
object and exit 0 when the look-up was made (whatever its answer), 1 when the request was
malformed. The look-up uses the pod's resolver (its /etc/resolv.conf: cluster DNS, search
path, ndots), so `orders` means what it means to the pod. Parsing and the answer's shape are
pure; `answer` does the I/O, bounded by LOOKUP_TIMEOUT so a dead DNS server never hangs the
agent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket

from sidecar import protocol

LOOKUP_TIMEOUT = 10.0
MAX_NAME = 253
_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_LABELS = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?\Z")


def parse(command: str) -> tuple[str, str] | None:
    """(kind, argument) for a resolve command, or None when `command` is not one."""
    verb, _, arg = command.strip().partition(" ")
    if verb in (protocol.CMD_RESOLVE, protocol.CMD_RESOLVE_PTR):
        return verb, arg.strip()
    return None


def problem(kind: str, arg: str) -> str | None:
    """Why the argument cannot be looked up, or None."""
    if kind == protocol.CMD_RESOLVE:
        if not arg or len(arg) > MAX_NAME or not _LABELS.match(arg):
            return f"not a host name: {arg[:80]!r}"
        return None
    try:
        ipaddress.ip_address(arg)
    except ValueError:
        return f"not an IP address: {arg[:80]!r}"
    return None


def error_kind(exc: BaseException) -> str:
    """The reason code of a failed look-up: nxdomain when the name does not exist, timeout,
    else failed."""
    if isinstance(exc, TimeoutError):
        return protocol.REASON_TIMEOUT
    if isinstance(exc, socket.gaierror) and exc.errno in (
        socket.EAI_NONAME,
        getattr(socket, "EAI_NODATA", socket.EAI_NONAME),
    ):
        return protocol.REASON_NXDOMAIN
    return protocol.REASON_FAILED


async def answer(kind: str, arg: str) -> tuple[str, int]:
    """(stdout, exit status) for one resolve command."""
    why = problem(kind, arg)
    if why is not None:
        return json.dumps({"error": why, "kind": protocol.REASON_INVALID}) + "\n", 1
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT):
            if kind == protocol.CMD_RESOLVE:
                infos = await loop.getaddrinfo(arg, None, type=socket.SOCK_STREAM)
                seen: list[str] = []
                for family, *_rest, sockaddr in infos:
                    if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in seen:
                        seen.append(str(sockaddr[0]))
                body: dict[str, object] = {"addresses": seen}
            else:
                host, _port = await loop.getnameinfo((arg, 0), socket.NI_NAMEREQD)
                body = {"names": [host]}
    except (OSError, TimeoutError) as exc:
        text = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        body = {"error": text, "kind": error_kind(exc)}
    return json.dumps(body) + "\n", 0
