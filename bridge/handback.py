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

from bridge import restore
from bridge.errors import BridgeError
from bridge.handover import proxy_ips, wait_service_ips
from bridge.kube import Api, ApiError, Obj
from bridge.lease import Lease
from bridge.link import Linker
from bridge.progress import Progress

SETTLE = 1.0  # after the proxy left the endpoints: for proxies that apply them with a delay


async def hand_back(api: Api, lease: Lease, linker: Linker, manifest: Obj,
                    progress: Progress, bound: float) -> None:
    name, replicas = lease.name, lease.lock.replicas
    try:
        await lease.scale_original(replicas)
        if replicas > 0:
            await restore.wait_original_ready(api, name, replicas, bound, progress)
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
        services = await restore.services_selecting(api, manifest)
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
            await wait_service_ips(api, services, out)
        except ApiError:
            pass  # not allowed to read Endpoints: nothing more to learn
        return
    progress.warn(f"the proxy pod is still in the Service endpoints after {bound:g}s")
