"""Which pod addresses a Service sends traffic to, from EndpointSlices (pure).

v1 Endpoints is deprecated since Kubernetes 1.33 and truncated at 1000 addresses; EndpointSlices
(discovery.k8s.io/v1) are what kube-proxy reads. A Service has one slice per address family
(and per 100 endpoints by default): every slice labelled `kubernetes.io/service-name` counts.
An endpoint's `conditions.ready` absent means ready (the API says so); FQDN slices carry no pod
addresses. Pods on dual-stack / IPv6-only clusters have their addresses in `status.podIPs`.
`ready_ips_from_endpoints` reads the old v1 Endpoints, for servers without EndpointSlices.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Obj = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
IP_FAMILIES = ("IPv4", "IPv6")


def _ip(value: Any) -> str | None:
    """A normalised IP address, or None for anything else (the object is untrusted)."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def slice_selector(service: str) -> str:
    return f"{SERVICE_NAME_LABEL}={service}"


def ready_ips(slices: Iterable[Obj], service: str | None = None) -> set[str]:
    """Addresses of ready endpoints over all of a Service's slices (those of another Service,
    when `service` is given, are ignored)."""
    out: set[str] = set()
    for sl in slices:
        if not isinstance(sl, dict) or sl.get("addressType") not in IP_FAMILIES:
            continue
        if service is not None:
            labels = (sl.get("metadata") or {}).get("labels") or {}
            if not isinstance(labels, dict) or labels.get(SERVICE_NAME_LABEL) != service:
                continue
        endpoints = sl.get("endpoints")
        for ep in endpoints if isinstance(endpoints, list) else []:
            if not isinstance(ep, dict):
                continue
            cond = ep.get("conditions")
            ready = cond.get("ready") if isinstance(cond, dict) else None
            if ready is False:
                continue
            addresses = ep.get("addresses")
            for a in addresses if isinstance(addresses, list) else []:
                ip = _ip(a)
                if ip:
                    out.add(ip)
    return out


def services_selector(services: Iterable[str]) -> str:
    """The label selector of the EndpointSlices of these Services (names are DNS labels)."""
    return f"{SERVICE_NAME_LABEL} in ({','.join(sorted(set(services)))})"


def ready_ips_by_service(slices: list[Obj], services: Iterable[str]) -> dict[str, set[str]]:
    """Each Service's ready addresses, from one list of slices (several Services' mixed)."""
    return {name: ready_ips(slices, name) for name in services}


def ready_ips_from_endpoints(endpoints: Obj) -> set[str]:
    """Ready addresses of a v1 Endpoints object (fallback when EndpointSlices are not served)."""
    out: set[str] = set()
    subsets = endpoints.get("subsets") if isinstance(endpoints, dict) else None
    for s in subsets if isinstance(subsets, list) else []:
        addresses = s.get("addresses") if isinstance(s, dict) else None
        for a in addresses if isinstance(addresses, list) else []:
            ip = _ip(a.get("ip")) if isinstance(a, dict) else None
            if ip:
                out.add(ip)
    return out


def pod_ips(pod: Obj) -> set[str]:
    """Every address of a pod: `status.podIPs` (dual-stack) and `status.podIP`."""
    status = pod.get("status") if isinstance(pod, dict) else None
    if not isinstance(status, dict):
        return set()
    out: set[str] = set()
    listed = status.get("podIPs")
    for entry in listed if isinstance(listed, list) else []:
        ip = _ip(entry.get("ip")) if isinstance(entry, dict) else None
        if ip:
            out.add(ip)
    ip = _ip(status.get("podIP"))
    if ip:
        out.add(ip)
    return out


def serves(service_ips: set[str], pod: Obj) -> bool:
    """True when the Service sends traffic to this pod (any of its addresses)."""
    return bool(service_ips & pod_ips(pod))
