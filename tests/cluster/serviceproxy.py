"""ClusterIP service proxy: a userspace TCP relay in the cluster process (kube-proxy's old
userspace mode).

For every TCP port of every Service with a ClusterIP, the ClusterIP is added to the bridge as a
/32 and a listener on ClusterIP:port relays each connection to one of the Service's ready
endpoints (the `addresses` of its Endpoints object, never `notReadyAddresses`), round robin;
an endpoint that refuses is skipped for the next. No ready endpoint: the connection is closed.
Listeners follow the Services, backends follow the Endpoints. Existing connections are kept when
a Service or endpoint goes away, as with conntrack.

The relay is protocol based (no coroutine per chunk): reading one side is paused while the
other side's write buffer is full, and a half-close on one side is passed on as a half-close.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .network import Network
from .store import Store

Obj = dict[str, Any]
log = logging.getLogger(__name__)

BackendKey = tuple[str, str, str]  # namespace, service name, port name
Target = tuple[str, int]
CONNECT_TIMEOUT = 2.0
WRITE_HIGH_WATER = 1 << 20


@dataclass(frozen=True)
class Listen:
    ip: str
    port: int
    backend: BackendKey


def desired_listeners(services: Iterable[Obj]) -> dict[tuple[str, int], Listen]:
    """(ClusterIP, port) -> which endpoints it relays to, for every TCP Service port."""
    out: dict[tuple[str, int], Listen] = {}
    for svc in services:
        spec = svc.get("spec", {})
        ip = spec.get("clusterIP")
        if not ip or ip == "None" or spec.get("type") == "ExternalName":
            continue
        meta = svc["metadata"]
        for port in spec.get("ports") or []:
            if (port.get("protocol") or "TCP") != "TCP":
                continue
            key = (meta.get("namespace", "default"), meta["name"], port.get("name") or "")
            out[(ip, int(port["port"]))] = Listen(ip, int(port["port"]), key)
    return out


def ready_backends(endpoints: Iterable[Obj]) -> dict[BackendKey, list[Target]]:
    """(namespace, service, port name) -> ready (ip, port) targets."""
    out: dict[BackendKey, list[Target]] = {}
    for ep in endpoints:
        meta = ep["metadata"]
        for subset in ep.get("subsets") or []:
            addresses = [a["ip"] for a in subset.get("addresses") or [] if a.get("ip")]
            for port in subset.get("ports") or []:
                key = (meta.get("namespace", "default"), meta["name"], port.get("name") or "")
                out.setdefault(key, []).extend((ip, int(port["port"])) for ip in addresses)
    return out


class _Side(asyncio.Protocol):
    """One end of a relayed connection; `peer` is the other end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if peer.eof:
                peer.transport.close()
                return False
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
        return True  # keep the other direction open

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.close()


class _Client(_Side):
    def __init__(self, proxy: ServiceProxy, backend: BackendKey) -> None:
        super().__init__()
        self.proxy = proxy
        self.backend = backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect())
        self.proxy._tasks.add(task)
        task.add_done_callback(self.proxy._tasks.discard)

    async def _connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        for host, port in self.proxy.candidates(self.backend):
            if self.closed:
                return
            try:
                _, side = await asyncio.wait_for(
                    loop.create_connection(_Side, host, port), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                continue
            if self.closed:
                if side.transport is not None:
                    side.transport.close()
                return
            side.peer, self.peer = self, side
            self.transport.resume_reading()
            return
        self.transport.close()  # nothing ready to take it


class ServiceProxy:
    def __init__(self, store: Store, network: Network) -> None:
        self.store = store
        self.network = network
        self._servers: dict[tuple[str, int], tuple[Listen, asyncio.Server]] = {}
        self._backends: dict[BackendKey, list[Target]] = {}
        self._round_robin: dict[BackendKey, itertools.count[int]] = {}
        self._dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()

    def candidates(self, key: BackendKey) -> list[Target]:
        """Ready targets for `key` in round-robin order starting after the last one used."""
        targets = self._backends.get(key) or []
        if not targets:
            return []
        start = next(self._round_robin.setdefault(key, itertools.count())) % len(targets)
        return targets[start:] + targets[:start]

    async def start(self) -> None:
        _, rv = self.store.list("services")
        await self._sync()
        self._main = [
            asyncio.create_task(self._watch("services", rv)),
            asyncio.create_task(self._watch("endpoints", rv)),
            asyncio.create_task(self._loop()),
        ]

    async def _watch(self, resource: str, rv: str) -> None:
        async for _event in self.store.watch(resource, since=rv):
            self._dirty.set()

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._sync()
            except Exception:
                log.exception("service proxy sync failed")

    async def _sync(self) -> None:
        self._backends = ready_backends(self.store.list("endpoints")[0])
        wanted = desired_listeners(self.store.list("services")[0])
        for key, (listen, server) in list(self._servers.items()):
            if wanted.get(key) != listen:
                server.close()
                del self._servers[key]
        in_use = {ip for ip, _ in wanted}
        for address in list(self.network.service_ips()):
            if address not in in_use:
                await self.network.remove_service_ip(address)
        loop = asyncio.get_running_loop()
        for key, listen in wanted.items():
            if key in self._servers:
                continue
            try:
                await self.network.add_service_ip(listen.ip)
                server = await loop.create_server(
                    lambda b=listen.backend: _Client(self, b),  # type: ignore[misc]
                    listen.ip, listen.port, reuse_address=True,
                )
            except OSError as exc:
                log.error("cannot listen on %s:%s: %s", listen.ip, listen.port, exc)
                continue
            self._servers[key] = (listen, server)
        self.synced.set()

    async def stop(self) -> None:
        for task in self._main:
            task.cancel()
        for task in self._main:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, server in self._servers.values():
            server.close()
        self._servers.clear()
        for task in list(self._tasks):
            task.cancel()
        for address in list(self.network.service_ips()):
            await self.network.remove_service_ip(address)
