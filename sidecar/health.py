"""A tiny HTTP server for the kubelet's probes: /ready and /healthz, on all interfaces."""

from __future__ import annotations

import asyncio
import json

from sidecar import listen, protocol
from sidecar.ports import PortRegistry

REQUEST_TIMEOUT = 5.0
MAX_HEADER_BYTES = 8192

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def respond(method: str, path: str, registry: PortRegistry) -> tuple[int, dict[str, object]]:
    """Status and JSON body for one request (pure)."""
    path = path.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return 405, {"error": f"method {method} not allowed; use GET"}
    if path == protocol.HEALTH_PATH:
        return 200, {"ok": True}
    if path == protocol.READY_PATH:
        ready = registry.ready()
        held = sorted(registry.held())
        return (200 if ready else 503), {"ready": ready, "forwarded_ports": held}
    known = f"{protocol.READY_PATH} or {protocol.HEALTH_PATH}"
    return 404, {"error": f"unknown path {path}; try {known}"}


def render(method: str, status: int, body: dict[str, object]) -> bytes:
    payload = (json.dumps(body) + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + payload


async def _handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registry: PortRegistry
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return
        method, path = parts[0], parts[1]
        status, body = respond(method, path, registry)
        writer.write(render(method, status, body))
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()


async def start(port: int, registry: PortRegistry) -> list[asyncio.AbstractServer]:
    """Listen on 0.0.0.0:port and [::]:port (when available). Raises OSError."""
    socks = listen.all_interfaces(port)
    servers: list[asyncio.AbstractServer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(reader, writer, registry)

    try:
        for sock in socks:
            servers.append(
                await asyncio.start_server(
                    handle, sock=sock, limit=MAX_HEADER_BYTES, backlog=listen.LISTEN_BACKLOG
                )
            )
    except BaseException:
        for server in servers:
            server.close()
        for sock in socks:
            sock.close()
        raise
    return servers
