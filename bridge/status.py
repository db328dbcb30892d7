"""`bridge status`: the swapped Deployments of a namespace, as a kubectl-style table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from bridge import state
from bridge.kube import Obj
from bridge.target import name_of


@dataclass(frozen=True)
class Row:
    deployment: str
    owner: str
    ports: str
    age: str
    heartbeat: str
    state: str  # live | stale
    proxy: str
    session: str


def rows(deployments: Sequence[Obj], now: dt.datetime, ttl: float) -> list[Row]:
    out = []
    for dep in deployments:
        lock = state.decode(dep.get("metadata", {}).get("annotations"))
        if lock is None:
            continue
        silent = (now - lock.heartbeat).total_seconds()
        out.append(Row(
            deployment=name_of(dep), owner=lock.owner, ports=lock.ports or "-",
            age=state.describe_age((now - lock.started_at).total_seconds()),
            heartbeat=f"{state.describe_age(silent)} ago",
            # security: a lock bridge did not write is shown as such, never as stale
            state="invalid" if state.lock_problems(lock, now) else
            "stale" if state.is_stale(now, lock.heartbeat, ttl) else "live",
            proxy=lock.proxy or "-", session=lock.session,
        ))
    return sorted(out, key=lambda r: r.deployment)


HEADERS = ("DEPLOYMENT", "OWNER", "PORTS", "AGE", "HEARTBEAT", "STATE", "PROXY", "SESSION")


def table(rs: Sequence[Row]) -> str:
    lines = [HEADERS] + [(r.deployment, r.owner, r.ports, r.age, r.heartbeat, r.state, r.proxy,
                          r.session) for r in rs]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
