"""The resolve phase (read only): TARGET -> the Deployment, the Services selecting its pods, the
container to swap and the ports to bring over. Nothing is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import NothingChanged
from bridge.kube import readiness
from bridge.kube.client import Api, NamespaceNotFound, NotFound, Obj
from bridge.model import state, target


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


async def resolve_target(api: Api, text: str) -> tuple[Obj, list[Obj]]:
    """The Deployment TARGET names and the Services selecting its pods."""
    ref = target.parse_target(text)
    ns = api.namespace
    deployment: Obj | None = None
    if ref.kind in ("deployment", None):
        try:
            deployment = await api.get_deployment(ref.name)
        except NamespaceNotFound:
            raise
        except NotFound as e:
            if ref.kind == "deployment":
                raise NothingChanged(f'deployment "{ref.name}" not found in namespace "{ns}"; '
                                     "nothing was changed") from e
    if deployment is None:
        try:
            svc = await api.get_service(ref.name)
        except NamespaceNotFound:
            raise
        except NotFound as e:
            what = "service" if ref.kind == "service" else "deployment or service"
            raise NothingChanged(f'no {what} named "{ref.name}" in namespace "{ns}"; '
                                 "nothing was changed") from e
        # A swapped Deployment's proxy has the same pod labels: the Service selects it too,
        # but it is never what TARGET means (else `bridge restore svc/NAME` would be refused
        # as ambiguous exactly when it is needed).
        users = [d for d in await api.list_deployments()
                 if (d.get("metadata", {}).get("labels") or {}).get(state.MANAGED_BY_LABEL)
                 != state.MANAGED_BY]
        deployment = dict(target.resolve_service(svc, users))
    services = await readiness.services_selecting(api, deployment)
    return deployment, services
