"""Container logs as the kubelet keeps them: one file per container instance, CRI format.

Each record is one line `<RFC3339Nano time> <stdout|stderr> <F|P> <content>`; `F` ends a line
of output, `P` is a piece of a line that continues in the next record. Reading turns records
back into the bytes the container wrote, optionally prefixed with their time (kubectl
`--timestamps`), limited to the last N lines or to a recent period, and following new output
until the instance ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _parse_stamp(text: str) -> datetime:
    return datetime.strptime(text[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)


def encode_records(stream: str, data: bytes, when: datetime) -> bytes:
    """CRI records for one chunk of output."""
    out = bytearray()
    stamp = _stamp(when).encode()
    pieces = data.split(b"\n")
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if last and not piece:
            break
        out += stamp + b" " + stream.encode() + (b" P " if last else b" F ") + piece + b"\n"
    return bytes(out)


def decode_record(line: bytes) -> tuple[datetime, bytes]:
    """(time, output bytes) of one record line (without its trailing newline)."""
    stamp, _, rest = line.partition(b" ")
    _stream, _, rest = rest.partition(b" ")
    tag, _, content = rest.partition(b" ")
    return _parse_stamp(stamp.decode()), content + (b"\n" if tag == b"F" else b"")


class ContainerLog:
    """The log of one container instance; written by the kubelet, read by any number of readers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._changed = asyncio.Event()
        self.closed = False

    def write(self, stream: str, data: bytes) -> None:
        if self.closed or not data:
            return
        self._file.write(encode_records(stream, data, _now()))
        self._file.flush()
        self._notify()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self._file.close()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def read(
        self,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        timestamps: bool = False,
        since_seconds: int | None = None,
    ) -> AsyncIterator[bytes]:
        since = _now() - timedelta(seconds=since_seconds) if since_seconds is not None else None
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            records = _complete_records(handle.read())
            offset = sum(len(r) + 1 for r in records)
            out = _render(records, since, timestamps)
            if tail_lines is not None:
                out = _tail(out, tail_lines)
            if out:
                yield b"".join(out)
            while follow:
                changed = self._changed
                closed = self.closed
                handle.seek(offset)
                chunk = handle.read()
                records = _complete_records(chunk)
                offset += sum(len(r) + 1 for r in records)
                if records:
                    yield b"".join(_render(records, since, timestamps))
                    continue
                if closed:
                    return
                await changed.wait()


def _complete_records(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    return lines[:-1]  # the last element is empty or a record still being written


def _render(records: list[bytes], since: datetime | None, timestamps: bool) -> list[bytes]:
    out = []
    at_line_start = True
    for record in records:
        when, content = decode_record(record)
        if since is not None and when < since:
            continue
        if timestamps and at_line_start:
            content = _stamp(when).encode() + b" " + content
        at_line_start = content.endswith(b"\n")
        out.append(content)
    return out


def _tail(pieces: list[bytes], lines: int) -> list[bytes]:
    if lines <= 0:
        return []
    text = b"".join(pieces)
    parts = text.split(b"\n")
    ends_with_newline = parts[-1] == b""
    if ends_with_newline:
        parts = parts[:-1]
    kept = parts[-lines:]
    return [b"\n".join(kept) + (b"\n" if ends_with_newline else b"")] if kept else []
