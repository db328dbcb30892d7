"""`--forward SERVICE:PORT[:LOCAL]`: parsing, and the rewrite of the Service's environment
variables (Kubernetes' service links) to the local end of the forward. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.errors import BridgeError

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


@dataclass(frozen=True)
class Forward:
    service: str  # a Service name (or NAME.NAMESPACE...), dialled from the pod
    port: int
    local: int  # 0: any free port

    def spec(self) -> str:
        return f"{self.service}:{self.port}" + (f":{self.local}" if self.local else "")


def _port(text: str, spec: str, what: str, allow_zero: bool = False) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise BridgeError(f"--forward {spec}: {what} {text!r} is not a port number "
                          "(1-65535); nothing was changed")
    return int(text)


def parse(spec: str) -> Forward:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise BridgeError(f"--forward {spec}: expected SERVICE:PORT[:LOCAL]; nothing was changed")
    service = parts[0]
    labels = service.split(".")
    if not all(_DNS_LABEL.match(label) and len(label) <= 63 for label in labels):
        raise BridgeError(f"--forward {spec}: {service!r} is not a Service name; "
                          "nothing was changed")
    port = _port(parts[1], spec, "PORT")
    local = _port(parts[2], spec, "LOCAL", allow_zero=True) if len(parts) == 3 else 0
    return Forward(service, port, local)


def env_prefix(service: str) -> str:
    """`orders-db` -> `ORDERS_DB` (as the kubelet names service-link variables)."""
    return service.split(".")[0].upper().replace("-", "_")


def rewrite(env: Mapping[str, str], fwd: Forward, local_port: int,
            host: str = "127.0.0.1") -> dict[str, str]:
    """The variables of `env` that name fwd's Service port, pointed at host:local_port."""
    p = env_prefix(fwd.service)
    port = str(fwd.port)
    out: dict[str, str] = {}
    if f"{p}_SERVICE_HOST" in env:
        out[f"{p}_SERVICE_HOST"] = host
    for name, value in env.items():
        if name == f"{p}_SERVICE_PORT" or name.startswith(f"{p}_SERVICE_PORT_"):
            if value == port:
                out[name] = str(local_port)
        elif name == f"{p}_PORT" and value.endswith(f":{port}") and "://" in value:
            scheme = value.split("://", 1)[0]
            out[name] = f"{scheme}://{host}:{local_port}"
        elif name.startswith(f"{p}_PORT_{port}_"):
            rest = name[len(f"{p}_PORT_{port}_"):]
            if rest in ("TCP",):
                out[name] = f"tcp://{host}:{local_port}"
            elif rest == "TCP_ADDR":
                out[name] = host
            elif rest == "TCP_PORT":
                out[name] = str(local_port)
    return out
