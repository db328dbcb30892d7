"""What to swap: the Deployment behind TARGET, its container, and the ports to tunnel.

Pure functions over API objects as plain dicts (camelCase, as the API server sends them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError, NothingChanged

Obj = Mapping[str, Any]

_DEPLOYMENT_KINDS = {"deployment", "deployments", "deploy", "deployment.apps", "deployments.apps"}
_SERVICE_KINDS = {"service", "services", "svc"}


@dataclass(frozen=True)
class TargetRef:
    kind: str | None  # "deployment", "service", or None for a bare name (Deployment, else Service)
    name: str


@dataclass(frozen=True)
class PortMap:
    remote: int  # the container port the cluster sends traffic to
    local: int  # where the laptop process listens
    name: str = ""  # the containerPort's name, if any

    def spec(self) -> str:
        return str(self.remote) if self.remote == self.local else f"{self.remote}:{self.local}"


def parse_target(text: str) -> TargetRef:
    if "/" in text:
        kind, _, name = text.partition("/")
        k = kind.lower()
        if not name or "/" in name:
            raise BridgeError(
                f"invalid target {text!r}: expected NAME, deployment/NAME or svc/NAME")
        if k in _DEPLOYMENT_KINDS:
            return TargetRef("deployment", name)
        if k in _SERVICE_KINDS:
            return TargetRef("service", name)
        raise BridgeError(
            f"invalid target {text!r}: bridge swaps a deployment/NAME or a svc/NAME, not {kind!r}"
        )
    if not text:
        raise BridgeError("empty target: expected NAME, deployment/NAME or svc/NAME")
    return TargetRef(None, text)


def name_of(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def template_labels(deployment: Obj) -> dict[str, str]:
    return dict(deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels")
                or {})


def service_selects(service: Obj, labels: Mapping[str, str]) -> bool:
    """True when the Service's selector picks pods with these labels (an empty one never does)."""
    selector = service.get("spec", {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def deployments_of_service(service: Obj, deployments: Sequence[Obj]) -> list[Obj]:
    return [d for d in deployments if service_selects(service, template_labels(d))]


def resolve_service(service: Obj, deployments: Sequence[Obj]) -> Obj:
    """The single Deployment whose pods the Service selects."""
    svc = name_of(service)
    selector = service.get("spec", {}).get("selector") or {}
    if not selector:
        raise NothingChanged(
            f"service {svc!r} has no selector, so no Deployment serves it; nothing was changed"
        )
    found = deployments_of_service(service, deployments)
    sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    if not found:
        raise NothingChanged(
            f"service {svc!r} selects {sel} but no Deployment has pods with those labels; "
            "nothing was changed"
        )
    if len(found) > 1:
        names = ", ".join(sorted(f"deployment/{name_of(d)}" for d in found))
        raise NothingChanged(
            f"service {svc!r} selects pods of several Deployments ({names}); "
            "name one of them as TARGET; nothing was changed"
        )
    return found[0]


def containers(deployment: Obj) -> list[Obj]:
    return list(deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
                or [])


def _serves(container: Obj, target_port: int | str) -> bool:
    for p in container.get("ports") or []:
        if isinstance(target_port, str) and p.get("name") == target_port:
            return True
        if isinstance(target_port, int) and p.get("containerPort") == target_port:
            return True
    return False


def _target_ports(service: Obj) -> list[int | str]:
    out: list[int | str] = []
    for p in service.get("spec", {}).get("ports") or []:
        if (p.get("protocol") or "TCP") != "TCP":
            continue
        tp = p.get("targetPort", p.get("port"))
        if isinstance(tp, str) and tp.isdigit():
            tp = int(tp)
        if tp is not None:
            out.append(tp)
    return out


def choose_container(deployment: Obj, services: Sequence[Obj], wanted: str | None) -> Obj:
    """The container to replace: `wanted`, else the one serving the Services' target ports,
    else the only one."""
    dep = name_of(deployment)
    cs = containers(deployment)
    names = [str(c.get("name")) for c in cs]
    if wanted:
        for c in cs:
            if c.get("name") == wanted:
                return c
        raise NothingChanged(
            f"deployment {dep!r} has no container {wanted!r} (containers: {', '.join(names)}); "
            "nothing was changed"
        )
    if len(cs) == 1:
        return cs[0]
    serving = [c for c in cs if any(_serves(c, tp) for s in services for tp in _target_ports(s))]
    if len(serving) == 1:
        return serving[0]
    raise NothingChanged(
        f"deployment {dep!r} has several containers ({', '.join(names)}) and the Service does not "
        "tell which one to swap; choose one with --container; nothing was changed"
    )


def parse_port_spec(text: str) -> tuple[int | str, int | None]:
    """`REMOTE[:LOCAL]`; REMOTE may be a port name."""
    remote, sep, local = text.partition(":")
    if not remote or (sep and not local):
        raise BridgeError(f"invalid --port {text!r}: expected REMOTE[:LOCAL], e.g. 8080 or 80:8080")
    r: int | str = int(remote) if remote.isdigit() else remote
    lp: int | None = None
    if sep:
        if not local.isdigit():
            raise BridgeError(f"invalid --port {text!r}: LOCAL must be a port number")
        lp = int(local)
    for n in ([r] if isinstance(r, int) else []) + ([lp] if lp is not None else []):
        if not 1 <= n <= 65535:
            raise BridgeError(f"invalid --port {text!r}: ports are 1-65535")
    return r, lp


def choose_ports(container: Obj, services: Sequence[Obj], specs: Sequence[str]) -> list[PortMap]:
    """The ports to tunnel: the --port specs, else every TCP containerPort of the container."""
    cname = str(container.get("name"))
    declared = [p for p in container.get("ports") or [] if (p.get("protocol") or "TCP") == "TCP"]
    by_name = {str(p["name"]): int(p["containerPort"]) for p in declared if p.get("name")}
    numbers = {int(p["containerPort"]) for p in declared}
    # A Service may target a numeric port the container serves without declaring it.
    numbers |= {tp for s in services for tp in _target_ports(s) if isinstance(tp, int)}
    names = {v: k for k, v in by_name.items()}
    out: list[PortMap] = []
    if specs:
        for spec in specs:
            remote, local = parse_port_spec(spec)
            if isinstance(remote, str):
                if remote not in by_name:
                    have = ", ".join(sorted(by_name)) or "none"
                    raise NothingChanged(
                        f"container {cname!r} has no port named {remote!r} (named ports: {have}); "
                        "nothing was changed"
                    )
                remote = by_name[remote]
            elif remote not in numbers:
                have = ", ".join(str(n) for n in sorted(numbers)) or "none"
                raise NothingChanged(
                    f"container {cname!r} has no port {remote} (its ports: {have}); "
                    "nothing was changed"
                )
            out.append(PortMap(remote, local if local is not None else remote,
                               names.get(remote, "")))
    else:
        for n in sorted(numbers):
            out.append(PortMap(n, n, names.get(n, "")))
        if not out:
            raise NothingChanged(
                f"container {cname!r} declares no TCP port; say which with --port; "
                "nothing was changed"
            )
    seen_remote: set[int] = set()
    seen_local: set[int] = set()
    for pm in out:
        if pm.remote in seen_remote or pm.local in seen_local:
            raise NothingChanged(f"port {pm.spec()} is given twice; nothing was changed")
        seen_remote.add(pm.remote)
        seen_local.add(pm.local)
    return out
