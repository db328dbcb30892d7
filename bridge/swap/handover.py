"""The hand-over phase: traffic moves to the laptop without a gap. The command listens first,
then the remote forwards go on (so the proxy turns Ready), then the Services send traffic to
the proxy, and only then the original scales to zero.

In: the Linker (with its current link), the Lease, the proxy manifest, the ports, and a
`stop()` predicate (the command exited or the session is ending: stop waiting). Out: the link
in use afterwards, and whether the original was scaled to zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from bridge.errors import BridgeError
from bridge.kube import readiness
from bridge.kube.client import Api, ApiError, Obj
from bridge.local import ports as localports
from bridge.model import endpoints, state, target
from bridge.progress import Progress
from bridge.swap.lease import Lease
from bridge.swap.link import FORWARD_PATIENCE, Link, Linker
from bridge.swap.together import at_once

HAND_OVER_ATTEMPTS = 3  # how many times the tunnel may drop before the hand-over gives up
READY, STOPPED, TUNNEL_CLOSED = "ready", "stopped", "tunnel closed"


async def accepts(port: int) -> bool:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def wait_listening(ports: Sequence[int], bound: float, progress: Progress,
                         stop: Callable[[], bool],
                         tree: Callable[[], set[int]] | None = None) -> dict[int, str] | None:
    """Until the command listens on every local port: the address to forward each port to
    (bridge.local.ports.tree_hosts), or None when `stop()` turned true meanwhile. With `tree`
    (the command's processes, ports.command_pids, where listeners can be told: Linux) only a
    listener of theirs counts, so a stray server on the port is not taken for the command;
    without it, anything that accepts on 127.0.0.1. After `bound` bridge hands over anyway (to
    127.0.0.1), unless someone else listens there: then BridgeError."""
    hosts: dict[int, str] = {}
    waiting = list(ports)
    waiter = progress.waiting("the command to listen on " + ", ".join(
        f"127.0.0.1:{n}" for n in waiting))
    telling = tree is not None and localports.inspectable()
    with anyio.move_on_after(bound):
        while waiting:
            if stop():
                return None
            if telling and not await anyio.to_thread.run_sync(localports.listening_now,
                                                              waiting):
                pass  # nothing listens there yet: no walk of the process table this tick
            elif telling:
                assert tree is not None
                found = await anyio.to_thread.run_sync(localports.listeners)
                pids = await anyio.to_thread.run_sync(tree)
                hosts.update(localports.tree_hosts(waiting, pids, found))
            else:
                hosts.update({n: "127.0.0.1" for n in waiting if await accepts(n)})
            waiting = [n for n in ports if n not in hosts]
            if waiting:
                waiter.tick()
                await anyio.sleep(0.1)
        waiter.done()
        return hosts
    if telling:
        assert tree is not None
        found = await anyio.to_thread.run_sync(localports.listeners)
        taken = localports.strangers(waiting, await anyio.to_thread.run_sync(tree), found)
        if taken:
            shown = ", ".join(f"{localports.where(item)} (pid {item.pid or '?'}"
                              f"{', ' + item.name if item.name else ''})"
                              for _, item in sorted(taken.items()))
            raise BridgeError(f"the command does not listen on {', '.join(map(str, waiting))} "
                              f"after {bound:g}s and another process does: {shown}; the "
                              "traffic stays with the cluster")
    progress.warn(f"the command does not listen on {', '.join(map(str, waiting))} after "
                  f"{bound:g}s; handing the traffic over anyway")
    return {**{n: "127.0.0.1" for n in waiting}, **hosts}


async def proxy_ips(api: Api, session: str, pod: str | None = None) -> set[str]:
    pods = await api.list_pods(f"{state.SESSION_LABEL}={session}")
    ips: set[str] = set()
    for q in pods:  # every address of the pod (podIPs: dual-stack, IPv6)
        if pod is None or target.name_of(q) == pod:
            ips |= endpoints.pod_ips(q)
    return ips


@dataclass
class HandOver:
    api: Api
    linker: Linker
    lease: Lease
    manifest: Obj
    progress: Progress
    timeout: float
    stop: Callable[[], bool]
    # what wait_proxy_ready learnt, for wait_drained (one Services list, one pods list)
    services: list[Obj] | None = field(default=None, init=False)
    ready_ips: set[str] = field(default_factory=set, init=False)

    async def run(self) -> bool:
        """Hand the traffic over; True when the original was scaled to zero."""
        p, linker = self.progress, self.linker
        link = linker.current
        assert link is not None
        patience = 0.0
        ready = ""
        for attempt in range(1, HAND_OVER_ATTEMPTS + 1):
            if link.tunnel.is_closed():
                p.warn("connection to the proxy pod lost "
                       f"{'before' if attempt == 1 else 'during'} the hand-over; reconnecting")
                link = await linker.reconnect(link, forward=False, within=self.timeout)
                patience = FORWARD_PATIENCE  # the sidecar may still hold the ports
            try:
                await linker.forward(link, patience=patience)
            except BridgeError:
                if link.tunnel.is_closed():
                    continue
                raise
            try:
                with anyio.fail_after(self.timeout):
                    ready = await self.wait_proxy_ready(link)
            except TimeoutError:
                raise BridgeError(f"timed out after {self.timeout:g}s waiting for proxy pod "
                                  f"{link.pod} to become Ready") from None
            if ready != TUNNEL_CLOSED:
                break
        if ready not in (READY, STOPPED):
            raise BridgeError(f"the connection to the proxy pod dropped {HAND_OVER_ATTEMPTS} "
                              "times during the hand-over; see the proxy pod's log")
        if self.stop():
            return False  # the command is gone, or the session ends: the original keeps serving
        await self.lease.scale_original(0)
        await self.wait_drained(link.pod)
        lock = self.lease.lock
        p.info(f"scaled deployment/{self.lease.name} to 0 (was {lock.replicas}); traffic for "
               + ", ".join(f"port {pm.remote} -> localhost:{pm.local}"
                           for pm in self.linker.spec.ports))
        return True

    async def wait_proxy_ready(self, link: Link) -> str:
        """Until the proxy pod is Ready and every Service selecting it sends traffic to it
        (READY), `stop()` turns true (STOPPED: nothing to hand over to) or the tunnel closes
        (TUNNEL_CLOSED: the forwards are gone, the pod will never turn Ready)."""
        api, pod_name = self.api, link.pod
        waiter = self.progress.waiting(f"proxy pod {pod_name} to become Ready")

        def interrupted() -> str | None:
            if self.stop():
                waiter.done("the command exited or the session ends; not handing over")
                return STOPPED
            if link.tunnel.is_closed():
                return TUNNEL_CLOSED
            return None

        async def pod_ready(pods: list[Obj]) -> tuple[str, set[str]] | None:
            why = interrupted()
            if why is not None:
                return why, set()
            mine = [q for q in pods if target.name_of(q) == pod_name]
            if mine:
                await self.linker.check_pod(mine[0])
                if readiness.pod_ready(mine[0]):
                    return READY, endpoints.pod_ips(mine[0])
            waiter.tick()
            return None

        # the pod's watch (the Services selecting it read beside it: one round trip less),
        # then its Services' EndpointSlices' (decisions on what was seen)
        (outcome, ips), [services] = await at_once(
            lambda: readiness.until(
                api, readiness.pods(f"{state.SESSION_LABEL}={self.linker.spec.session}"),
                pod_ready),
            lambda: readiness.services_selecting(api, self.manifest))
        if outcome != READY:
            return outcome
        self.ready_ips = ips
        self.services = services

        def served(current: dict[str, set[str]]) -> str | None:
            why = interrupted()
            if why is not None:
                return why
            if all(current[n] & ips for n in current):
                return READY
            waiter.tick()
            return None
        if services:
            try:
                outcome = await readiness.service_ips(api, services, served)
            except ApiError:  # cannot see the endpoints (RBAC): the pod's readiness is all
                outcome = READY
            if outcome != READY:
                return outcome
        waiter.done(f"proxy pod {pod_name} Ready ({waiter.elapsed():.1f}s)")
        return READY

    async def wait_drained(self, pod_name: str) -> None:
        """Until the Services send traffic to the proxy only (bounded; informational)."""
        api = self.api
        services = self.services
        if services is None:
            services = await readiness.services_selecting(api, self.manifest)
        if not services:
            return
        ips = self.ready_ips or await proxy_ips(api, self.linker.spec.session, pod_name)
        waiter = self.progress.waiting(f"the original pods of deployment/{self.lease.name} to "
                                       "leave the Service endpoints")

        def drained(current: dict[str, set[str]]) -> bool | None:
            if self.stop():
                return False  # then the hand-back or the restore starts at once
            if all(v <= ips for v in current.values()):
                waiter.done()
                return True
            waiter.tick()
            return None
        with anyio.move_on_after(self.timeout):
            try:
                await readiness.service_ips(api, services, drained)
            except ApiError:
                pass  # not allowed to read Endpoints: nothing more to learn
            return
        self.progress.warn("the original pods are still in the Service endpoints after "
                           f"{self.timeout:g}s")
