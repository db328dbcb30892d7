"""What a forwarded socket sends before its SSH channel is open reaches the channel.

The socket end is paused until the channel opens, but Python before 3.11.4 (Debian bookworm's
3.11.2, found running the sidecar image on the real cluster) ignores a pause_reading() made in
connection_made, so the socket can be read early; those bytes and an early EOF must not be lost.
"""

from __future__ import annotations

from typing import Any

from sidecar.forwards import ChannelEnd, Pipe, Tally


class RecordingChannel:
    """Stands in for asyncssh's SSHTCPChannel: records what the pipe writes into it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.eof = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def write_eof(self) -> None:
        self.eof = True


def test_bytes_and_eof_read_before_the_channel_opened_are_sent_on_it() -> None:
    pipe = Pipe("test", Tally())
    pipe.from_socket(b"GET / HTTP/1.0\r\n")
    pipe.from_socket(b"\r\n")
    assert pipe.socket_eof()
    chan = RecordingChannel()
    end: Any = ChannelEnd(pipe)
    end.connection_made(chan)
    assert b"".join(chan.written) == b"GET / HTTP/1.0\r\n\r\n"
    assert chan.eof
    pipe.from_socket(b"later")  # once open, straight through
    assert chan.written[-1] == b"later"
