"""The benchmark's workload server: one asyncio TCP port, the same program behind every path.

Standalone (standard library only) so it can run as ``bridge swap``'s child, with the pod's
environment, from any directory: ``python tests/equipment/bench/server.py --port P [--body TEXT]``.
It prints ``listening <port>`` once it accepts connections.

The first byte of a connection picks the workload:

- ``U`` + 8-byte big-endian N: read N bytes, then answer ``K`` (bulk upload);
- ``D`` + 8-byte big-endian N: send N bytes (bulk download);
- ``E``: echo every byte back (small-message round trip);
- ``P``: answer ``p`` at once (new connection plus first byte);
- ``G``: HTTP/1.1 (``GET ...``): answer ``200`` with the body, keep-alive unless the request
  says ``Connection: close`` (wrk, the 1,000-connection burst, the swap probe).

Commands may follow each other on one connection once the previous one completed.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import struct
import sys

CHUNK = 256 * 1024
_PAYLOAD = bytes(CHUNK)
_LEN = struct.Struct(">Q")
HEADER_END = b"\r\n\r\n"


class Workload(asyncio.Protocol):
    def __init__(self, body: bytes) -> None:
        self._body = body
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._mode = b""  # b"" waiting for a command, else the current command byte
        self._remaining = 0  # bytes left to read (U) or to send (D)
        self._paused = False

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=4 * CHUNK)

    def data_received(self, data: bytes) -> None:
        if self._mode == b"E":
            self._write(data)
            return
        if self._mode == b"U":
            take = min(len(data), self._remaining)
            self._remaining -= take
            if self._remaining:
                return
            self._mode = b""
            self._write(b"K")
            data = data[take:]
            if not data:
                return
        self._buf += data
        self._advance()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._send_download()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    # -- the state machine ---------------------------------------------------------------

    def _advance(self) -> None:
        while self._buf and self._transport is not None:
            if self._mode == b"D":  # a command sent while a download runs waits for it
                return
            cmd = bytes(self._buf[:1])
            if cmd in (b"U", b"D"):
                if len(self._buf) < 1 + _LEN.size:
                    return
                (n,) = _LEN.unpack_from(self._buf, 1)
                del self._buf[: 1 + _LEN.size]
                self._mode, self._remaining = cmd, n
                if cmd == b"D":
                    self._send_download()
                    continue
                rest = bytes(self._buf)
                self._buf.clear()
                if n == 0:
                    self._mode = b""
                    self._write(b"K")
                if rest:
                    self.data_received(rest)
                return
            if cmd == b"E":
                self._mode = b"E"
                rest = bytes(self._buf[1:])
                self._buf.clear()
                if rest:
                    self._write(rest)
                return
            if cmd == b"P":
                del self._buf[:1]
                self._write(b"p")
                continue
            if cmd == b"G":
                if not self._http():
                    return
                continue
            self._transport.close()  # unknown command
            return

    def _http(self) -> bool:
        """Answer one complete request in the buffer; False if it is still incomplete."""
        end = self._buf.find(HEADER_END)
        if end < 0:
            if len(self._buf) > 65536:
                assert self._transport is not None
                self._transport.close()
            return False
        head = bytes(self._buf[:end]).lower()
        del self._buf[: end + len(HEADER_END)]
        close = b"\r\nconnection: close" in head
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(self._body)).encode()
            + (b"\r\nConnection: close" if close else b"")
            + HEADER_END
            + self._body
        )
        self._write(response)
        if close and self._transport is not None:
            self._transport.close()
            self._buf.clear()
        return True

    def _send_download(self) -> None:
        while self._mode == b"D" and not self._paused and self._transport is not None:
            if self._remaining == 0:
                self._mode = b""
                self._advance()
                return
            n = min(self._remaining, CHUNK)
            self._remaining -= n
            self._write(_PAYLOAD if n == CHUNK else _PAYLOAD[:n])

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def raise_fd_limit(want: int = 16384) -> None:
    """1,000 concurrent connections need more descriptors than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(host: str, port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Workload(body), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--body", default="ok\n", help="HTTP response body")
    args = parser.parse_args(argv)
    raise_fd_limit()
    asyncio.run(serve(args.host, args.port, args.body.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
