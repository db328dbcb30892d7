"""The resolve phase (read only): TARGET -> the Deployment, the Services selecting its pods, the
container to swap and the ports to bring over. Nothing is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import NothingChanged
from bridge.kube import readiness
from bridge.kube.client import Api, ApiError, NamespaceNotFound, NotFound, Obj
from bridge.model import state, target
from bridge.swap.together import at_once


@dataclass(frozen=True)
class Resolved:
    deployment: Obj  # as read (its resourceVersion conditions the lock)
    services: list[Obj]
    name: str
    container: str
    ports: list[target.PortMap]


async def resolve(api: Api, text: str, container: str | None,
                  ports: Sequence[str]) -> Resolved:
    deployment, services = await resolve_target(api, text)
    chosen = target.choose_container(deployment, services, container)
    return Resolved(deployment, services, target.name_of(deployment), str(chosen["name"]),
                    target.choose_ports(chosen, services, tuple(ports)))


async def resolve_with(api: Api, text: str, container: str | None, ports: Sequence[str],
                       ) -> tuple[Resolved, list[Obj], list[Obj]]:
    """`resolve`, with the namespace's ScaledObjects and LimitRanges (the controllers that
    would undo the swap, the sidecar's resources) read at the same time: neither depends on
    the Deployment, so the three cost one round trip, not three."""
    r, (scaled, limits) = await at_once(lambda: resolve(api, text, container, ports),
                                        api.list_scaled_objects, api.list_limit_ranges)
    return r, scaled, limits


async def resolve_target(api: Api, text: str) -> tuple[Obj, list[Obj]]:
    """The Deployment TARGET names and the Services selecting its pods. The reads that do not
    depend on each other go out at once: the Services list beside the Deployment's read, and
    (for a Service name) the Service beside the Deployments list; one round trip each way."""
    ref = target.parse_target(text)
    listed: list[list[Obj] | None] = []

    async def all_services() -> None:
        try:
            listed.append(await api.list_services())
        except ApiError:
            listed.append(None)  # not allowed to list Services: none known

    deployment, _ = await at_once(lambda: _the_deployment(api, ref), all_services)
    services = listed[0] if listed else None
    return deployment, readiness.selecting(services or [], deployment)


async def _the_deployment(api: Api, ref: target.TargetRef) -> Obj:
    ns = api.namespace
    if ref.kind in ("deployment", None):
        try:
            return await api.get_deployment(ref.name)
        except NamespaceNotFound:
            raise
        except NotFound as e:
            if ref.kind == "deployment":
                raise NothingChanged(f'deployment "{ref.name}" not found in namespace "{ns}"; '
                                     "nothing was changed") from e
    found: list[list[Obj]] = []
    failed: list[ApiError] = []

    async def all_deployments() -> None:
        try:
            found.append(await api.list_deployments())
        except ApiError as e:
            failed.append(e)  # raised once the Service is known to exist

    try:
        svc, _ = await at_once(lambda: api.get_service(ref.name), all_deployments)
    except NamespaceNotFound:
        raise
    except NotFound as e:
        what = "service" if ref.kind == "service" else "deployment or service"
        raise NothingChanged(f'no {what} named "{ref.name}" in namespace "{ns}"; '
                             "nothing was changed") from e
    if failed:
        raise failed[0]
    # A swapped Deployment's proxy has the same pod labels: the Service selects it too, but
    # it is never what TARGET means (else `bridge restore svc/NAME` would be refused as
    # ambiguous exactly when it is needed).
    users = [d for d in found[0]
             if (d.get("metadata", {}).get("labels") or {}).get(state.MANAGED_BY_LABEL)
             != state.MANAGED_BY]
    return dict(target.resolve_service(svc, users))
