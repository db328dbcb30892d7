"""Who listens on the laptop's forwarded ports (issue 13, item 7: local port squatting).

In attach mode bridge forwards the cluster's requests to 127.0.0.1:PORT and the developer
starts the service there later. Another user of the same machine could listen there first and
receive those requests (with their credentials). `squatters` decides, from a snapshot of the
machine's listening sockets, which forwarded ports another user holds; `listeners` takes the
snapshot (Linux, psutil). A socket whose process cannot be inspected belongs to another user:
an unprivileged user can always inspect their own processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

LOOPBACK_OR_ANY = {"127.0.0.1", "0.0.0.0", "::", "::1", "::ffff:127.0.0.1", ""}


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int | None  # None: not inspectable (another user's process)
    uid: int | None  # the process's real uid, when known


def squatters(ports: Sequence[int], uid: int, found: Iterable[Listener]) -> dict[int, Listener]:
    """The ports of `ports` on which a listener reachable at 127.0.0.1 belongs to someone
    other than `uid` (root's listeners count as foreign too, unless we are root)."""
    wanted = set(ports)
    out: dict[int, Listener] = {}
    for item in found:
        if item.port in wanted and item.address in LOOPBACK_OR_ANY and item.uid != uid:
            out.setdefault(item.port, item)
    return out


def listeners() -> list[Listener]:
    """The machine's listening TCP sockets with their owners, as far as we may see them."""
    found: list[Listener] = []
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return found
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr:
            continue
        uid = None
        if c.pid is not None:
            try:
                uid = psutil.Process(c.pid).uids().real
            except psutil.Error:
                uid = None
        found.append(Listener(str(c.laddr.ip), int(c.laddr.port), c.pid, uid))
    return found


def problem(ports: Sequence[int]) -> str:
    """One line naming the forwarded ports another user listens on ("" when none; always ""
    off Linux, where the owner cannot be told)."""
    if not ports or not os.uname().sysname == "Linux":
        return ""
    taken = squatters(ports, os.getuid(), listeners())
    if not taken:
        return ""
    shown = ", ".join(
        f"127.0.0.1:{port} ({'pid ' + str(item.pid) if item.pid else 'a process'} of "
        f"{'uid ' + str(item.uid) if item.uid is not None else 'another user'})"
        for port, item in sorted(taken.items()))
    return (f"another user listens on {shown}: the cluster's requests would go to them; "
            "stop that listener or pick another local port with --port REMOTE:LOCAL")
