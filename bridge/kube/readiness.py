"""Readiness: what the swap's phases wait for, and the one waiter they wait with.

`until(api, watch, check)` is the waiter: the objects `watch` names are listed, then watched
from the list's resourceVersion (`Api.wait_for`: re-listed on 410, polled when the server
refuses the watch), and `check` is asked on every change and every tick until it answers
something. An API server that does not answer, throttles or falters (after the client's own
retries) does not end the wait: it starts again a moment later. The caller's deadline
(anyio.fail_after / move_on_after) bounds it; other refusals (403, 404...) propagate.

The queries every phase shares are built on it: a pod's and a Deployment's readiness (pure),
the Services selecting a Deployment's pods, the Services' ready addresses (EndpointSlices
watched, one request for all of them; v1 Endpoints polled on a server without slices), the
original Ready and served (hand-back, restore), a session's pods gone (restore).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from bridge.errors import BridgeError
from bridge.kube.client import Api, ApiError, Obj, ServerTrouble, Unreachable
from bridge.model import endpoints, state
from bridge.model.target import name_of, service_selects, template_labels
from bridge.progress import Progress, Waiter

R = TypeVar("R")

TICK = 0.25  # how often a check looks again at what it has seen (its own state may change)
POLL = 0.25  # the interval of the polls where nothing can be watched (v1 Endpoints)
AGAIN = 1.0  # after an API server that did not answer (or 429/5xx): start the wait again


@dataclass(frozen=True)
class Watch:
    """What to watch: a collection `Api.wait_for` knows ("pods", "endpointslices",
    "deployments") and its selectors."""

    kind: str
    label_selector: str = ""
    field_selector: str = ""


def deployment(name: str) -> Watch:
    return Watch("deployments", field_selector=f"metadata.name={name}")


def pods(selector: str) -> Watch:
    return Watch("pods", selector)


def transient(e: BaseException) -> bool:
    """An answer worth waiting through: no answer at all, throttling, a server-side error."""
    return isinstance(e, Unreachable | ServerTrouble)


async def until(api: Api, watch: Watch, check: Callable[[list[Obj]], Awaitable[R | None]], *,
                tick: float = TICK, again: float = AGAIN) -> R:
    """THE waiter: `check(objects)` on every change of what `watch` names and every `tick`,
    until it returns something (returned). Bound it with the caller's deadline."""
    while True:
        try:
            return await api.wait_for(watch.kind, watch.label_selector, check, tick=tick,
                                      field_selector=watch.field_selector)
        except BridgeError as e:
            if not transient(e):
                raise
        await anyio.sleep(again)


# -- pure readiness ---------------------------------------------------------------------------

def pod_ready(pod: Obj) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def deployment_ready(dep: Obj, replicas: int) -> bool:
    """The controller saw the latest spec, and `replicas` pods of it are updated and Ready."""
    meta = dep.get("metadata", {})
    st = dep.get("status") or {}
    return (int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
            and int(st.get("readyReplicas") or 0) >= replicas
            and int(st.get("updatedReplicas") or 0) >= replicas)


def original_ips(pods: list[Obj]) -> set[str]:
    """Every address of the Ready pods that are not a bridge session's (its proxy's)."""
    ips: set[str] = set()
    for p in pods:  # [realbeh] every address of the pod (podIPs)
        if (state.SESSION_LABEL not in (p.get("metadata", {}).get("labels") or {})
                and pod_ready(p)):
            ips |= endpoints.pod_ips(p)
    return ips


def match_labels_selector(dep: Mapping[str, Any]) -> str:
    """The Deployment's matchLabels as a label selector ("" when it has none)."""
    selector = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in selector.items())


# -- queries ----------------------------------------------------------------------------------

def selecting(services: list[Obj], dep: Obj) -> list[Obj]:
    """Those of `services` whose selector matches the Deployment's pod labels."""
    labels = template_labels(dep)
    return [s for s in services if service_selects(s, labels)]


async def services_selecting(api: Api, dep: Obj) -> list[Obj]:
    """The Services whose selector matches the Deployment's pod labels ([] when not allowed)."""
    try:
        return selecting(await api.list_services(), dep)
    except ApiError:
        return []


async def service_ips(api: Api, services: Sequence[Obj],
                      decide: Callable[[dict[str, set[str]]], R | None]) -> R:
    """[realbeh] Until `decide` returns something for the Services' ready addresses (by
    Service name; asked on every change and every tick): their EndpointSlices watched (one
    request open for all of them); v1 Endpoints polled on a server without EndpointSlices
    (404). Other ApiErrors (403: not allowed to read them) propagate."""
    names = sorted({name_of(svc) for svc in services})

    async def check(slices: list[Obj]) -> R | None:
        return decide(endpoints.ready_ips_by_service(slices, names))
    try:
        return await until(api, Watch("endpointslices", endpoints.services_selector(names)),
                           check)
    except ApiError as e:
        if e.status != 404:
            raise
    while True:
        found = decide({n: await api.service_ready_ips(n) for n in names})
        if found is not None:
            return found
        await anyio.sleep(POLL)


async def wait_original_ready(api: Api, name: str, replicas: int, wait_timeout: float,
                              progress: Progress) -> None:
    """Until the Deployment has its replicas Ready and each of its Services sends traffic to
    at least one of them (TimeoutError after `wait_timeout`)."""
    waiter = progress.waiting(f"deployment/{name} to have {replicas} ready "
                              f"replica{'s' if replicas != 1 else ''}")

    async def ready(deps: list[Obj]) -> Obj | None:
        for d in deps:
            if name_of(d) == name and deployment_ready(d, replicas):
                return d
        waiter.tick()
        return None

    async def serving(found: list[Obj]) -> set[str] | None:
        ips = original_ips(found)
        if ips:
            return ips
        waiter.tick()
        return None

    with anyio.fail_after(wait_timeout):
        dep = await until(api, deployment(name), ready)
        services = await services_selecting(api, dep)
        if services:
            ips = await until(api, pods(match_labels_selector(dep)), serving)

            def served(current: dict[str, set[str]]) -> bool | None:
                if all(v & ips for v in current.values()):
                    return True
                waiter.tick()
                return None
            try:
                await service_ips(api, services, served)
            except ApiError:
                pass  # cannot see the endpoints (RBAC): the pods' readiness is all we know
    waiter.done()


async def wait_pods_gone(api: Api, selector: str, wait_timeout: float, progress: Progress,
                         what: str) -> bool:
    """Until no pod matches `selector` (bounded, with progress); False when time ran out."""
    waiter: Waiter | None = None

    async def gone(found: list[Obj]) -> bool | None:
        nonlocal waiter
        if not found:
            return True
        if waiter is None:
            waiter = progress.waiting(what)
        waiter.tick()
        return None

    with anyio.move_on_after(wait_timeout):
        await until(api, pods(selector), gone)
        if waiter is not None:
            waiter.done()
        return True
    return False
