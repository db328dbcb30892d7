"""`bridge status`: the swapped Deployments of a namespace, as a kubectl-style table.

Whether a session is live or stale is what watching its heartbeat showed (`state.liveness`,
on this machine's clock); the AGE column is the holder's start time read on this machine's
clock, shown only.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.kube.client import Obj
from bridge.model import state
from bridge.model.target import name_of


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


def locked(deployments: Sequence[Obj]) -> dict[str, tuple[Obj, state.Lock]]:
    """The Deployments carrying a lock whose session's heartbeat is worth watching."""
    out = {}
    for dep in deployments:
        lock = state.decode(dep.get("metadata", {}).get("annotations"))
        if lock is not None and state.needs_watching(lock):
            out[name_of(dep)] = (dep, lock)
    return out


def describe(seen: state.Liveness | None) -> tuple[str, str]:
    """(HEARTBEAT, STATE) for what watching a session's heartbeat showed."""
    if isinstance(seen, state.Running):
        return f"your bridge here ({seen.where()})", "live"
    if isinstance(seen, state.Alive):
        return f"beat within {state.describe_age(seen.after)}", "live"
    if isinstance(seen, state.Stale):
        return f"silent for {state.describe_age(seen.silent_for)}", "stale"
    if isinstance(seen, state.Ended):
        return f"bridge pid {seen.pid} here ended", "stale"
    return "-", "unknown"


def rows(deployments: Sequence[Obj], now: dt.datetime,
         seen: Mapping[str, state.Liveness]) -> list[Row]:
    """One row per locked Deployment; `seen`: what watching each session's heartbeat showed."""
    out = []
    for dep in deployments:
        lock = state.decode(dep.get("metadata", {}).get("annotations"))
        if lock is None:
            continue
        name = name_of(dep)
        heartbeat, live = describe(seen.get(name))
        if state.lock_problems(lock):  # security: a lock bridge did not write, never stale
            heartbeat, live = "-", "invalid"
        out.append(Row(
            deployment=name, owner=lock.owner, ports=lock.ports or "-",
            age=state.describe_age((now - lock.started_at).total_seconds()),
            heartbeat=heartbeat, state=live, proxy=lock.proxy or "-", session=lock.session,
        ))
    return sorted(out, key=lambda r: r.deployment)


def restore_commands(rs: Sequence[Row], namespace: str, context: str | None = None,
                     kubeconfig: str | None = None) -> list[str]:
    """For each stale session, the exact command that repairs it (quoted for a POSIX shell;
    the context and kubeconfig named when the user named them, so it goes to the same
    cluster)."""
    out = []
    for r in rs:
        if r.state != "stale":
            continue
        argv = ["bridge", "restore", r.deployment, "-n", namespace]
        if context:
            argv += ["--context", context]
        if kubeconfig:
            argv += ["--kubeconfig", kubeconfig]
        out.append(f"deployment/{r.deployment}: its session is stale; repair it with: "
                   + shlex.join(argv))
    return out


HEADERS = ("DEPLOYMENT", "OWNER", "PORTS", "AGE", "HEARTBEAT", "STATE", "PROXY", "SESSION")


def table(rs: Sequence[Row]) -> str:
    lines = [HEADERS] + [(r.deployment, r.owner, r.ports, r.age, r.heartbeat, r.state, r.proxy,
                          r.session) for r in rs]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
