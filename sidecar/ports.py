"""Who holds which remote-forward port: a small state machine with no I/O.

A client (identified by an opaque connection id) claims a port before the
sidecar binds it, and releases it when the forward is cancelled, the bind
fails, or the client disconnects. Readiness is a function of this state.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


class Claim(enum.Enum):
    GRANTED = "granted"
    NOT_ALLOWED = "not-allowed"  # not in BRIDGE_PORTS
    HELD_BY_OTHER = "held-by-other"  # another connected client holds it
    ALREADY_HELD = "already-held"  # this client already forwards it
    SHUTTING_DOWN = "shutting-down"  # SIGTERM received, no new forwards


def refusal_message(claim: Claim, port: int, allowed: Iterable[int]) -> str:
    """One line saying why a forward request for `port` was refused."""
    allowed_text = ", ".join(str(p) for p in sorted(allowed)) or "none"
    return {
        Claim.NOT_ALLOWED: f"port {port} is not in BRIDGE_PORTS (allowed: {allowed_text})",
        Claim.HELD_BY_OTHER: f"port {port} is held by another connected client",
        Claim.ALREADY_HELD: f"port {port} is already forwarded by this client",
        Claim.SHUTTING_DOWN: "the sidecar is shutting down",
        Claim.GRANTED: f"port {port} granted",
    }[claim]


@dataclass
class PortRegistry:
    allowed: frozenset[int]
    _holders: dict[int, Hashable] = field(default_factory=dict)
    _clients: set[Hashable] = field(default_factory=set)
    _closed: bool = False
    _withdrawn: bool = False  # the agent is handing traffic back: not ready, forwards kept

    def attach(self, client: Hashable) -> None:
        """An authenticated client is connected."""
        self._clients.add(client)

    def detach(self, client: Hashable) -> list[int]:
        """The client disconnected: forget it and free every port it held."""
        self._clients.discard(client)
        freed = [port for port, holder in self._holders.items() if holder == client]
        for port in freed:
            del self._holders[port]
        return sorted(freed)

    def claim(self, client: Hashable, port: int) -> Claim:
        if self._closed:
            return Claim.SHUTTING_DOWN
        if port not in self.allowed:
            return Claim.NOT_ALLOWED
        holder = self._holders.get(port)
        if holder is not None:
            return Claim.ALREADY_HELD if holder == client else Claim.HELD_BY_OTHER
        self._holders[port] = client
        return Claim.GRANTED

    def release(self, client: Hashable, port: int) -> bool:
        """Free `port` if `client` holds it; return whether it did."""
        if self._holders.get(port) == client:
            del self._holders[port]
            return True
        return False

    def withdraw(self) -> None:
        """The agent hands traffic back: report not ready, keep every forward."""
        self._withdrawn = True

    def close(self) -> None:
        """Shutting down: refuse new claims and report not ready."""
        self._closed = True

    def held(self) -> dict[int, Hashable]:
        return dict(self._holders)

    def ready(self) -> bool:
        """Ready while an authenticated client holds a forward (or, with no ports
        configured, while one is connected); never after close()."""
        if self._closed or self._withdrawn:
            return False
        if not self.allowed:
            return bool(self._clients)
        return any(holder in self._clients for holder in self._holders.values())
