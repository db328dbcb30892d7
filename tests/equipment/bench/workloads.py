"""The benchmark's clients: the same code against every path (they only see host and port).

Sequential workloads use blocking sockets (the least client overhead, so the limit path is a
real limit); the 1,000-connection burst uses asyncio. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass

_LEN = struct.Struct(">Q")
CHUNK = 256 * 1024
HTTP_GET_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


class WorkloadError(RuntimeError):
    """A workload could not complete (connection refused, reset, short read, timeout)."""


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    parts = []
    while n:
        chunk = sock.recv(min(n, CHUNK))
        if not chunk:
            raise WorkloadError("connection closed by the peer before the reply")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def bulk_upload(host: str, port: int, nbytes: int, timeout: float = 60.0) -> float:
    """Seconds to send ``nbytes`` and get the server's acknowledgement."""
    payload = memoryview(bytes(CHUNK))
    with _connect(host, port, timeout) as sock:
        start = time.perf_counter()
        sock.sendall(b"U" + _LEN.pack(nbytes))
        left = nbytes
        while left:
            n = min(left, CHUNK)
            sock.sendall(payload[:n])
            left -= n
        if _recv_exact(sock, 1) != b"K":
            raise WorkloadError("bad upload acknowledgement")
        return time.perf_counter() - start


def bulk_download(host: str, port: int, nbytes: int, timeout: float = 60.0) -> float:
    """Seconds to request and receive ``nbytes``."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with _connect(host, port, timeout) as sock:
        start = time.perf_counter()
        sock.sendall(b"D" + _LEN.pack(nbytes))
        left = nbytes
        while left:
            n = sock.recv_into(view, min(left, CHUNK))
            if n == 0:
                raise WorkloadError(f"download ended {left} bytes short")
            left -= n
        return time.perf_counter() - start


def round_trips(host: str, port: int, count: int, budget: float, size: int = 64,
                timeout: float = 10.0) -> list[float]:
    """Seconds per echo of a ``size``-byte message on one connection (after one warm-up)."""
    msg = b"x" * size
    samples: list[float] = []
    with _connect(host, port, timeout) as sock:
        sock.sendall(b"E")
        sock.sendall(msg)
        _recv_exact(sock, size)  # warm-up: the tunnel's channel is open from here on
        deadline = time.perf_counter() + budget
        while len(samples) < count and time.perf_counter() < deadline:
            start = time.perf_counter()
            sock.sendall(msg)
            _recv_exact(sock, size)
            samples.append(time.perf_counter() - start)
    return samples


def connect_first_byte(host: str, port: int, count: int, budget: float,
                       timeout: float = 10.0) -> list[float]:
    """Seconds from connect() to the first byte of the reply, one new connection each."""
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while len(samples) < count and time.perf_counter() < deadline:
        start = time.perf_counter()
        with _connect(host, port, timeout) as sock:
            sock.sendall(b"P")
            if _recv_exact(sock, 1) != b"p":
                raise WorkloadError("bad first byte")
            samples.append(time.perf_counter() - start)
    return samples


@dataclass(frozen=True)
class BurstResult:
    connections: int
    errors: int
    seconds: float  # start of the burst to the last reply (or failure)
    first_error: str  # "" when there were none


async def _burst(host: str, port: int, n: int, limit: float) -> BurstResult:
    """Open ``n`` connections at once; each sends one HTTP request and reads the whole reply.

    Every connection stays open until all have finished, so all ``n`` are held at the peak.
    """
    done = asyncio.Event()
    finished = 0
    errors: list[str] = []

    async def one() -> None:
        nonlocal finished
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(HTTP_GET_CLOSE)
                reply = await reader.read(-1)  # the server closes after the reply
                parse_http_reply(reply)
        except (OSError, TimeoutError, WorkloadError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            finished += 1
            if finished == n:
                done.set()
            try:
                await asyncio.wait_for(done.wait(), limit)
            except TimeoutError:
                pass
            if writer is not None:
                writer.close()

    start = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await done.wait()
    seconds = time.perf_counter() - start
    await asyncio.gather(*tasks, return_exceptions=True)
    return BurstResult(n, len(errors), seconds, errors[0] if errors else "")


def burst(host: str, port: int, n: int, timeout: float = 60.0) -> BurstResult:
    return asyncio.run(_burst(host, port, n, timeout))


def http_get(host: str, port: int, timeout: float = 2.0) -> bytes:
    """One ``GET /`` with ``Connection: close``; the body (raises OSError/WorkloadError)."""
    with _connect(host, port, timeout) as sock:
        sock.sendall(HTTP_GET_CLOSE)
        parts = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            parts.append(chunk)
    return parse_http_reply(b"".join(parts))


def parse_http_reply(reply: bytes) -> bytes:
    """The body of a complete ``200`` reply with a matching Content-Length, else WorkloadError."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200 "):
        raise WorkloadError(f"bad HTTP reply {reply[:40]!r}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and int(value) != len(body):
            raise WorkloadError(f"HTTP body of {len(body)} bytes, announced {int(value)}")
    return body
