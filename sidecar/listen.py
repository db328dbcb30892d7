"""Listening sockets on every interface: 0.0.0.0 and [::] (when the host has IPv6)."""

from __future__ import annotations

import errno
import os
import socket

LISTEN_BACKLOG = 512

# errno values meaning "this host (or pod) has no IPv6"; anything else is a real failure.
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def _listen(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            # A separate IPv4 socket covers 0.0.0.0, whatever net.ipv6.bindv6only says.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # Rebind at once while old connections on the port sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def all_interfaces(port: int) -> list[socket.socket]:
    """Non-blocking listening sockets for `port` on all IPv4 and IPv6 addresses.

    Raises the OSError of the first real failure (nothing is left open then).
    """
    v4 = _listen(socket.AF_INET, "0.0.0.0", port)
    try:
        v6 = _listen(socket.AF_INET6, "::", port)
    except OSError as exc:
        if exc.errno in _NO_IPV6:
            return [v4]
        v4.close()
        raise
    return [v4, v6]


def error_text(exc: OSError) -> str:
    """`Address already in use`, `Connection refused`, `Name or service not known`,
    `timed out`: the reason alone, without asyncio's wrapping."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)
