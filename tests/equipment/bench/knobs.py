"""Tuning knobs of the tunnel, applied inside the agent or sidecar process of a sweep.

The knobs are the module-level settings bridge and the sidecar read at call time, and the
asyncio read size both use, so a sweep measures the real code with one value changed:

- ``cipher``: the only cipher both ends offer (``Tunnel.connect(ciphers=)``,
  ``sidecar.protocol.PREFERRED_CIPHERS``);
- ``window`` / ``pktsize``: receive window and largest packet of the forwarded channels, on
  both sides (``Tunnel.connect(forward_window=, forward_max_pktsize=)`` and
  ``sidecar.protocol.FORWARD_*``: each side's window governs one direction);
- ``read_size``: bytes asyncio asks ``recv()`` for per read on every socket (default 256 KiB);
- ``ssh_read_size``: the same, on the SSH connection's socket only (asyncssh re-slices its
  input buffer once per packet, so a read of many packets costs more than its bytes);
- ``nodelay``: False drops every ``TCP_NODELAY`` asyncio, asyncssh and the sidecar set;
- ``loop``: "uvloop" runs the event loop of uvloop (when importable) instead of asyncio's,
  "uvloop-agent" only in the agent; an experiment to size what a faster loop would gain;
- ``ignore_packets``: False stops asyncssh from sending an empty ``SSH_MSG_IGNORE`` before
  every packet (a guard for CBC ciphers, moot with AES-GCM); an experiment to size what an
  upstream change would gain, not a setting bridge could ship.
"""

from __future__ import annotations

import asyncio.selector_events
import socket
from collections.abc import Iterable, Mapping
from typing import Any

KNOBS = frozenset({"cipher", "window", "pktsize", "read_size", "ssh_read_size", "nodelay",
                   "ignore_packets", "loop"})
ENV = "BRIDGE_BENCH_TUNING"  # JSON of the knobs, for the sidecar process


def unknown(tuning: Mapping[str, Any]) -> list[str]:
    return sorted(set(tuning) - KNOBS)


# Agent-side knobs are keyword arguments of Tunnel.connect (its defaults are bound when the
# module loads, so patching module constants would measure nothing).
CONNECT_KWARGS = {"cipher": "ciphers", "window": "forward_window",
                  "pktsize": "forward_max_pktsize"}


def connect_kwargs(tuning: Mapping[str, Any], accepted: Iterable[str]) -> dict[str, Any]:
    """The ``Tunnel.connect`` keyword arguments for ``tuning``; ValueError if it takes none
    of that name (a sweep must never measure a silent no-op)."""
    accepted = set(accepted)
    out: dict[str, Any] = {}
    for knob, kwarg in CONNECT_KWARGS.items():
        if knob not in tuning:
            continue
        if kwarg not in accepted:
            raise ValueError(f"Tunnel.connect takes no {kwarg}= (for the {knob} knob)")
        out[kwarg] = (str(tuning[knob]),) if knob == "cipher" else int(tuning[knob])
    return out


def apply(tuning: Mapping[str, Any], side: str) -> None:
    """Set this process's knobs; ``side`` is "agent" or "sidecar" (the agent's connection
    knobs go through ``connect_kwargs``)."""
    bad = unknown(tuning)
    if bad:
        raise ValueError(f"unknown tuning knob(s) {bad}; known: {sorted(KNOBS)}")
    if side == "sidecar":  # the sidecar reads these from its protocol module at each use
        import sidecar.protocol as module

        settings = (("window", "FORWARD_WINDOW", int), ("pktsize", "FORWARD_MAX_PKTSIZE", int),
                    ("cipher", "PREFERRED_CIPHERS", lambda c: (str(c),)))
        for knob, name, conv in settings:
            if knob not in tuning:
                continue
            if not hasattr(module, name):  # renamed: refuse rather than measure a no-op
                raise ValueError(f"sidecar.protocol has no setting {name} any more")
            setattr(module, name, conv(tuning[knob]))
    if "read_size" in tuning:
        _transport_class().max_size = int(tuning["read_size"])
    if "ssh_read_size" in tuning:
        _ssh_read_size(int(tuning["ssh_read_size"]))
    if tuning.get("nodelay") is False:
        _drop_nodelay()
    if tuning.get("ignore_packets") is False:
        _drop_ignore_packets()
    if tuning.get("loop") == "uvloop" or (tuning.get("loop") == "uvloop-agent"
                                          and side == "agent"):
        import uvloop  # an experiment only: not a dependency of bridge

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif tuning.get("loop", "asyncio") not in ("asyncio", "uvloop-agent"):
        raise ValueError(f"unknown event loop {tuning['loop']!r}; known: asyncio, uvloop")


def _transport_class() -> Any:
    """asyncio's TCP transport class, whose ``max_size`` is the bytes asked per recv()."""
    return asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]


def _ssh_read_size(size: int) -> None:
    import asyncssh.connection as conn_mod

    original = conn_mod.SSHConnection.connection_made

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, _transport_class()):
            transport.max_size = size  # an instance attribute shadows the class default
        original(self, transport)

    conn_mod.SSHConnection.connection_made = connection_made  # type: ignore[method-assign]


def _drop_ignore_packets() -> None:
    import asyncssh.connection as conn_mod

    original = conn_mod.SSHConnection.send_packet

    def send_packet(self: Any, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if pkttype == conn_mod.MSG_IGNORE:
            return
        original(self, pkttype, *args, **kwargs)

    conn_mod.SSHConnection.send_packet = send_packet  # type: ignore[method-assign]


def _drop_nodelay() -> None:
    original = socket.socket.setsockopt

    def setsockopt(self: socket.socket, level: int, option: int, *value: Any) -> None:
        if level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY:
            return
        original(self, level, option, *value)

    socket.socket.setsockopt = setsockopt  # type: ignore[assignment,method-assign]
