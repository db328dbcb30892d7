"""One accepted connection on an HTTP port: HTTP/2 (h2c prior knowledge) when its first 24
bytes are the HTTP/2 client preface, else HTTP/1.1 (design sections 6 and 7.1, state NEW).

A building block, **not wired in yet** (like `route_h1` and `route_h2`, which it hands the
connection to). It decides on as few bytes as it can: as soon as what came differs from the
preface, HTTP/1.1 (so a short HTTP/1.0 request never waits for 24 bytes); the bytes read to
decide are replayed to the chosen router first.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

from sidecar import route_h1, route_h2
from sidecar.route_h1 import Reader, Writer

T = TypeVar("T", bound=Hashable)


class _Replay:
    """A reader that gives `first` before what `reader` reads."""

    def __init__(self, first: bytes, reader: Reader) -> None:
        self._first = first
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        if self._first:
            data = self._first if n < 0 else self._first[:n]
            self._first = self._first[len(data):]
            return data
        return await self._reader.read(n)

    def at_eof(self) -> bool:
        return not self._first and self._reader.at_eof()


async def sniff(reader: Reader) -> tuple[bool, bytes]:
    """Whether the connection starts with the h2 preface, and the bytes read to know."""
    got = b""
    while len(got) < len(route_h2.PREFACE) and route_h2.PREFACE.startswith(got):
        data = await reader.read(len(route_h2.PREFACE) - len(got))
        if not data:
            break
        got += data
    return got == route_h2.PREFACE, got


async def serve(reader: Reader, writer: Writer, route_h1_: route_h1.Route[T],
                route_h2_: route_h2.Route[T], connect: route_h1.Connect[T]) -> None:
    """Serve one connection with the router its first bytes call for (see the module)."""
    is_h2, first = await sniff(reader)
    replay = _Replay(first, reader)
    if is_h2:
        await route_h2.serve(replay, writer, route_h2_, connect)
    else:
        await route_h1.serve(replay, writer, route_h1_, connect)

