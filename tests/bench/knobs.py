"""Tuning knobs of the tunnel, applied inside the agent or sidecar process of a sweep.

The knobs are the module-level settings bridge and the sidecar read at call time, and the
asyncio read size both use, so a sweep measures the real code with one value changed:

- ``cipher``: the agent's only offered cipher (``bridge.tunnel.ENCRYPTION_ALGS``; the client's
  preference decides what is negotiated);
- ``window`` / ``pktsize``: receive window and largest packet of the forwarded channels, on
  both sides (``bridge.tunnel.FORWARD_*`` and ``sidecar.protocol.FORWARD_*``: each side's
  window governs one direction);
- ``read_size``: bytes asyncio asks ``recv()`` for per read on every socket (default 256 KiB);
- ``nodelay``: False drops every ``TCP_NODELAY`` asyncio, asyncssh and the sidecar set.
"""

from __future__ import annotations

import asyncio.selector_events
import socket
from collections.abc import Mapping
from typing import Any

KNOBS = frozenset({"cipher", "window", "pktsize", "read_size", "nodelay"})
ENV = "BRIDGE_BENCH_TUNING"  # JSON of the knobs, for the sidecar process


def unknown(tuning: Mapping[str, Any]) -> list[str]:
    return sorted(set(tuning) - KNOBS)


def apply(tuning: Mapping[str, Any], side: str) -> None:
    """Set the knobs in this process; ``side`` is "agent" or "sidecar"."""
    bad = unknown(tuning)
    if bad:
        raise ValueError(f"unknown tuning knob(s) {bad}; known: {sorted(KNOBS)}")
    if side == "agent":
        import bridge.tunnel as module
    else:
        import sidecar.protocol as module  # type: ignore[no-redef]
    if "cipher" in tuning and side == "agent":
        module.ENCRYPTION_ALGS = (str(tuning["cipher"]),)  # type: ignore[attr-defined]
    if "window" in tuning:
        module.FORWARD_WINDOW = int(tuning["window"])
    if "pktsize" in tuning:
        module.FORWARD_MAX_PKTSIZE = int(tuning["pktsize"])
    if "read_size" in tuning:
        asyncio.selector_events._SelectorSocketTransport.max_size = int(tuning["read_size"])
    if tuning.get("nodelay") is False:
        _drop_nodelay()


def _drop_nodelay() -> None:
    original = socket.socket.setsockopt

    def setsockopt(self: socket.socket, level: int, option: int, *value: Any) -> None:
        if level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY:
            return
        original(self, level, option, *value)

    socket.socket.setsockopt = setsockopt  # type: ignore[assignment,method-assign]
