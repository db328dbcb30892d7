"""The hand-back phase: traffic goes back to the cluster before the laptop process stops. The
original scales up and is Ready and in the Service endpoints (both serve for a moment), then
the sidecar is told to report not Ready (its forwards still work), and once the proxy pod has
left the endpoints bridge waits SETTLE more (kube-proxy applies endpoint changes a moment
later) before the command is signalled.

In: the Lease, the Linker (its current link), the proxy manifest. Out: nothing; every failure
is a warning (the restore that follows tries again), so a hand-back never keeps a session from
ending.
"""

from __future__ import annotations

import anyio

from bridge.errors import BridgeError
from bridge.kube import readiness
from bridge.kube.client import Api, ApiError, Obj
from bridge.model import target
from bridge.progress import Progress
from bridge.swap.handover import proxy_ips
from bridge.swap.lease import Lease
from bridge.swap.link import POLL, Linker

SETTLE = 1.0  # after the proxy left the endpoints: for proxies that apply them with a delay


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
        await anyio.sleep(SETTLE)


async def wait_proxy_out(api: Api, session: str, manifest: Obj, progress: Progress,
                         bound: float) -> None:
    """Until no Service sends traffic to the proxy pods (bounded; informational)."""
    try:
        services = await readiness.services_selecting(api, manifest)
        ips = await proxy_ips(api, session)
    except ApiError:
        return
    if not services or not ips:
        return
    waiter = progress.waiting("the proxy pod to leave the Service endpoints")
    # Polled, not watched: kube-proxy applies the change a moment after the API shows it, and
    # SETTLE was sized with this loop's detection delay included. Watched (seen at once), one
    # e2e hand-back run on the real cluster lost a request here; not proven to be the cause.
    with anyio.move_on_after(bound):
        while True:
            try:
                current: set[str] = set()
                for svc in services:  # EndpointSlices, every address family
                    current |= await api.service_ready_ips(target.name_of(svc))
            except ApiError:
                return  # not allowed to read Endpoints: nothing more to learn
            if not current & ips:
                waiter.done()
                return
            waiter.tick()
            await anyio.sleep(POLL)
    progress.warn(f"the proxy pod is still in the Service endpoints after {bound:g}s")
