"""`pods/{name}/portforward` over a websocket, as the kubelet speaks it (`v4.channel.k8s.io`).

For the i-th requested port, channel 2*i carries data and 2*i+1 errors. Every binary frame
is one channel byte and a payload; the first frame the server writes on each channel is the
port as 2 bytes little-endian. Each port gets one TCP connection to localhost:PORT inside the
pod's network namespace (node.dial); the websocket ends when all of them have ended.
kubectl (1.31+) asks for the subprotocol `SPDY/3.1+portforward.k8s.io` instead, served by
portforward_tunnel.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

from aiohttp import WSMsgType, web

from .errors import bad_request
from .portforward_tunnel import offers_tunnel, serve_tunnel

PROTOCOLS = ("v4.channel.k8s.io", "channel.k8s.io")
CHUNK = 64 * 1024


def parse_ports(values: list[str]) -> list[int]:
    ports: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 0 < int(part) < 65536:
                raise bad_request(f'invalid port "{part}"')
            ports.append(int(part))
    if not ports:
        raise bad_request("at least one port must be specified")
    return ports


async def serve_portforward(request: web.Request, store: Any, node: Any, namespace: str,
                            pod_name: str) -> web.StreamResponse:
    pod = store.get("pods", namespace, pod_name)
    phase = pod.get("status", {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        raise bad_request(f"cannot port forward to a completed pod (phase {phase})")
    if offers_tunnel(request):  # kubectl 1.31+: SPDY/3.1 inside the websocket, ports per stream
        return await serve_tunnel(request, node, namespace, pod_name,
                                  pod["metadata"].get("uid", ""))
    ports = parse_ports(request.query.getall("ports", []) + request.query.getall("port", []))
    ws = web.WebSocketResponse(protocols=PROTOCOLS, autoping=True, max_msg_size=0,
                               compress=False)
    if not ws.can_prepare(request).ok:
        raise bad_request("Upgrade request required")
    await ws.prepare(request)
    uid = pod["metadata"].get("uid", "")
    writers: dict[int, asyncio.StreamWriter] = {}
    buffered: dict[int, list[bytes]] = {}
    send_lock = asyncio.Lock()

    async def send(channel: int, payload: bytes) -> None:
        async with send_lock:
            await ws.send_bytes(bytes([channel]) + payload)

    for i, port in enumerate(ports):
        await send(2 * i, struct.pack("<H", port))
        await send(2 * i + 1, struct.pack("<H", port))

    async def forward(i: int, port: int) -> None:
        try:
            reader, writer = await node.dial(namespace, pod_name, port)
        except (ConnectionError, OSError) as err:
            message = (f"error forwarding port {port} to pod {uid}, uid : {err}")
            with contextlib.suppress(ConnectionError, RuntimeError):
                await send(2 * i + 1, message.encode())
            return
        writers[i] = writer
        for chunk in buffered.pop(i, []):
            writer.write(chunk)
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await send(2 * i, data)
        except (ConnectionError, OSError, RuntimeError):
            pass
        finally:
            writers.pop(i, None)
            writer.close()

    tasks = [asyncio.ensure_future(forward(i, p)) for i, p in enumerate(ports)]
    all_done = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))

    async def pump_in() -> None:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue
            channel, payload = msg.data[0], msg.data[1:]
            if channel % 2 or channel // 2 >= len(ports) or not payload:
                continue
            i = channel // 2
            writer = writers.get(i)
            if writer is None:
                buffered.setdefault(i, []).append(payload)
                continue
            writer.write(payload)
            await writer.drain()

    reader_task = asyncio.ensure_future(pump_in())
    try:
        waiting: list[asyncio.Future[Any]] = [reader_task, all_done]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader_task, *tasks):
            task.cancel()
        for writer in list(writers.values()):
            writer.close()
        with contextlib.suppress(BaseException):
            await all_done
        with contextlib.suppress(BaseException):
            await reader_task
        await ws.close()
    return ws
