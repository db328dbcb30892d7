"""The hand-back phase: traffic goes back to the cluster before the laptop process stops. The
original scales up and is Ready and in the Service endpoints (both serve for a moment), then
the sidecar is told to report not Ready (its forwards still work), and once the proxy pod has
left the endpoints bridge waits until the data path is quiet before the command is signalled.

Why quiet, and not a fixed delay: the EndpointSlices show what the API server knows, not what
each node's kube-proxy has programmed; kube-proxy applies a change on its own time (an
iptables sync takes longer on a busy node). A poll hid part of that behind its own detection
delay; a watch sees the change at once. So bridge waits until BOTH the proxy left the
endpoints SETTLE ago, AND no connection came through the tunnel for QUIET: a connection that
still arrives proves some node still routes to the proxy, and restarts the wait.

In: the Lease, the Linker (its current link), the proxy manifest. Out: nothing; every failure
is a warning (the restore that follows tries again), so a hand-back never keeps a session from
ending.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from bridge.errors import BridgeError
from bridge.kube import readiness
from bridge.kube.client import Api, ApiError, Obj
from bridge.progress import Progress
from bridge.swap.handover import proxy_ips
from bridge.swap.lease import Lease
from bridge.swap.link import Linker

SETTLE = 1.0  # after the proxy left the endpoints (as the API says): kube-proxy's own delay
QUIET = 1.0  # and no connection through the tunnel for this long (one still came: not settled)


async def hand_back(api: Api, lease: Lease, linker: Linker, manifest: Obj,
                    progress: Progress, bound: float) -> None:
    name, replicas = lease.name, lease.lock.replicas
    try:
        await lease.scale_original(replicas)
        if replicas > 0:
            await readiness.wait_original_ready(api, name, replicas, bound, progress)
    except TimeoutError:
        progress.warn(f"deployment/{name} is not Ready after {bound:g}s; handing back anyway")
    except BridgeError as e:
        progress.warn(f"could not bring deployment/{name} back before the command stops: {e}")
    if await linker.withdraw():
        await wait_proxy_out(api, lease.lock.session, manifest, progress, bound)
        link = linker.current
        await wait_quiet(lambda: link.tunnel.last_forwarded if link else 0.0, progress, bound)


def settle_left(now: float, out_at: float, last_forwarded: float) -> float:
    """Seconds still to wait (<= 0: settled) at `now`, the proxy having left the endpoints at
    `out_at` and the tunnel's last forwarded connection having come at `last_forwarded`."""
    return max(out_at + SETTLE, last_forwarded + QUIET) - now


async def wait_quiet(last_forwarded: Callable[[], float], progress: Progress,
                     bound: float) -> None:
    """Until `settle_left` says settled (bounded by `bound`; then a warning)."""
    out_at = time.monotonic()
    with anyio.move_on_after(bound):
        while True:
            left = settle_left(time.monotonic(), out_at, last_forwarded())
            if left <= 0:
                late = last_forwarded() - out_at
                progress.detail(f"the data path was quiet {time.monotonic() - out_at:.2f}s "
                                "after the proxy left the endpoints" + (
                                    f" (a connection still came through the tunnel "
                                    f"{late:.2f}s after)" if late > 0 else ""))
                return
            await anyio.sleep(left)
    progress.warn(f"connections still reached the proxy pod {bound:g}s after it left the "
                  "Service endpoints; stopping the command anyway")


async def wait_proxy_out(api: Api, session: str, manifest: Obj, progress: Progress,
                         bound: float) -> None:
    """Until no Service sends traffic to the proxy pods, as the EndpointSlices say (watched;
    bounded; informational)."""
    try:
        services = await readiness.services_selecting(api, manifest)
        ips = await proxy_ips(api, session)
    except ApiError:
        return
    if not services or not ips:
        return
    waiter = progress.waiting("the proxy pod to leave the Service endpoints")

    def out(current: dict[str, set[str]]) -> bool | None:
        if not any(v & ips for v in current.values()):
            waiter.done()
            return True
        waiter.tick()
        return None
    with anyio.move_on_after(bound):
        try:
            await readiness.service_ips(api, services, out)
        except ApiError:
            pass  # not allowed to read Endpoints: nothing more to learn
        return
    progress.warn(f"the proxy pod is still in the Service endpoints after {bound:g}s")
