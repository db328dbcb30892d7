"""The proxy container's resources: small and explicit, within the namespace's LimitRange (pure).

The sidecar is an SSH relay; it needs little CPU and memory. Copying the app's resources would
reserve what the app needed (and may not fit a quota next to the running original), and leaving
them unset fails a ResourceQuota that requires limits. So requests and limits for cpu and memory
are always set, then moved into every `Container` LimitRange item's [min, max], with
limit/request kept within its maxLimitRequestRatio.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import format_quantity, parse_quantity

Obj = dict[str, Any]

SIDECAR_REQUESTS = {"cpu": "50m", "memory": "64Mi"}
SIDECAR_LIMITS = {"cpu": "1", "memory": "256Mi"}
_SUFFIX = {"cpu": "m", "memory": "Mi"}


def _q(value: Any) -> Decimal | None:
    if not isinstance(value, (str, int, float)):
        return None
    try:
        q = parse_quantity(value)
    except ValueError:
        return None
    return q if q >= 0 else None


def _fmt(resource: str, value: Decimal) -> str:
    if resource == "memory":
        mib = -(-value // (1024 * 1024))  # round up to whole MiB
        return f"{int(mib)}Mi"
    milli = -(-(value * 1000) // 1)  # round up to whole millicores
    return format_quantity(Decimal(milli) / 1000, "m")


def _container_items(limit_ranges: Iterable[Obj]) -> list[Obj]:
    items: list[Obj] = []
    for lr in limit_ranges:
        spec = lr.get("spec") if isinstance(lr, dict) else None
        limits = spec.get("limits") if isinstance(spec, dict) else None
        for item in limits if isinstance(limits, list) else []:
            if isinstance(item, dict) and item.get("type") == "Container":
                items.append(item)
    return items


def sidecar_resources(limit_ranges: Iterable[Obj] = ()) -> dict[str, dict[str, str]]:
    """`resources` for the proxy container, fitted into the namespace's LimitRanges."""
    items = _container_items(limit_ranges)
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for resource in ("cpu", "memory"):
        req = parse_quantity(SIDECAR_REQUESTS[resource])
        lim = parse_quantity(SIDECAR_LIMITS[resource])
        for item in items:
            lo = _q((item.get("min") or {}).get(resource)) if isinstance(item.get("min"),
                                                                          dict) else None
            hi = _q((item.get("max") or {}).get(resource)) if isinstance(item.get("max"),
                                                                         dict) else None
            ratio_map = item.get("maxLimitRequestRatio")
            ratio = _q(ratio_map.get(resource)) if isinstance(ratio_map, dict) else None
            if lo is not None:
                req, lim = max(req, lo), max(lim, lo)
            if hi is not None:
                req, lim = min(req, hi), min(lim, hi)
            if ratio is not None and ratio > 0 and lim > req * ratio:
                lim = req * ratio
        lim = max(lim, req)
        requests[resource] = _fmt(resource, req)
        limits[resource] = _fmt(resource, lim)
    return {"requests": requests, "limits": limits}
