"""ClusterIP service proxy: a userspace TCP relay in the cluster process (kube-proxy's old
userspace mode).

For every TCP port of every Service with a ClusterIP, the ClusterIP is added to the bridge as a
/32 and a listener on ClusterIP:port relays each connection to one of the Service's ready
endpoints (the `addresses` of its Endpoints object, never `notReadyAddresses`), round robin;
an endpoint that refuses is skipped for the next. No ready endpoint: the connection is closed.
Listeners follow the Services, backends follow the Endpoints. Existing connections are kept when
a Service or endpoint goes away, as with conntrack.

Accepting and connecting happen on the event loop; the bytes are then moved by a `Relay`
(splice(2) on two threads), so bulk traffic neither copies through Python nor slows the API
server that shares the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .network import Network
from .store import Store

Obj = dict[str, Any]
log = logging.getLogger(__name__)

BackendKey = tuple[str, str, str]  # namespace, service name, port name
Target = tuple[str, int]
CONNECT_TIMEOUT = 2.0
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ on Linux only


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


class Relay:
    """Copies bytes both ways between two connected sockets, one thread per direction, with
    splice(2) through a pipe (no copy through Python, no load on the event loop). An EOF on one
    side becomes a half-close (SHUT_WR) on the other; an error ends both directions."""

    def __init__(self, a: socket.socket, b: socket.socket,
                 on_done: Callable[[Relay], None]) -> None:
        self.sockets = (a, b)
        self._on_done = on_done
        self._lock = threading.Lock()
        self._running = 2

    def start(self) -> None:
        a, b = self.sockets
        for src, dst in ((a, b), (b, a)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                             name="clusterip-relay").start()

    def abort(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        read_end, write_end = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
        try:
            while True:
                n = os.splice(src.fileno(), write_end, PIPE_SIZE)
                if n == 0:
                    break
                while n:
                    n -= os.splice(read_end, dst.fileno(), n)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()
        finally:
            os.close(read_end)
            os.close(write_end)
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                for sock in self.sockets:
                    sock.close()
                self._on_done(self)


@dataclass
class _Listener:
    listen: Listen
    sock: socket.socket
    task: asyncio.Task[None]


class ServiceProxy:
    def __init__(self, store: Store, network: Network) -> None:
        self.store = store
        self.network = network
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._backends: dict[BackendKey, list[Target]] = {}
        self._round_robin: dict[BackendKey, itertools.count[int]] = {}
        self._dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._relays: set[Relay] = set()
        self._main: list[asyncio.Task[None]] = []

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
        for key, listener in list(self._listeners.items()):
            if wanted.get(key) != listener.listen:
                await self._close_listener(listener)
                del self._listeners[key]
        in_use = {ip for ip, _ in wanted}
        for address in list(self.network.service_ips()):
            if address not in in_use:
                await self.network.remove_service_ip(address)
        for key, listen in wanted.items():
            if key in self._listeners:
                continue
            try:
                await self.network.add_service_ip(listen.ip)
                sock = socket.create_server((listen.ip, listen.port), backlog=128)
            except OSError as exc:
                log.error("cannot listen on %s:%s: %s", listen.ip, listen.port, exc)
                continue
            sock.setblocking(False)
            task = asyncio.create_task(self._accept(sock, listen.backend))
            self._listeners[key] = _Listener(listen, sock, task)

    @staticmethod
    async def _close_listener(listener: _Listener) -> None:
        # Stop accepting first (that unregisters the fd from the loop), then close.
        listener.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener.task
        listener.sock.close()

    async def _accept(self, listener: socket.socket, backend: BackendKey) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(listener)
            except OSError:
                return  # listener closed
            task = asyncio.create_task(self._connect(client, backend))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, client: socket.socket, backend: BackendKey) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.candidates(backend):
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(upstream, (host, port)),
                                       CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                upstream.close()
                continue
            except BaseException:
                upstream.close()
                client.close()
                raise
            for sock in (client, upstream):
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            relay = Relay(client, upstream, self._relays.discard)
            self._relays.add(relay)
            relay.start()
            return
        client.close()  # nothing ready to take it

    async def stop(self) -> None:
        for task in self._main:
            task.cancel()
        for task in self._main:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for listener in self._listeners.values():
            await self._close_listener(listener)
        self._listeners.clear()
        for task in list(self._tasks):
            task.cancel()
        for relay in list(self._relays):
            relay.abort()
        for address in list(self.network.service_ips()):
            await self.network.remove_service_ip(address)
