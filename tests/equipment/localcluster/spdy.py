"""SPDY/3.1 as kubectl speaks it for port-forward: frame codec, header blocks, a sans-IO session.

Every frame starts with 8 bytes. A control frame has the top bit set, then the 15-bit version
(3) and the 16-bit type; a data frame has the top bit clear and the 31-bit stream id. Both
then carry 8 bits of flags and a 24-bit payload length. Header blocks (in SYN_STREAM,
SYN_REPLY and HEADERS) are a 32-bit count of name/value pairs, each a 32-bit length and bytes,
compressed with zlib primed by the SPDY/3 dictionary: one compression context per direction
for the whole connection, each block ended with a sync flush.

`Session` holds the server side's state: feed it the bytes that arrive (`receive`), act on
the events it returns, call its methods to reply, send data, half-close or reset a stream,
and write whatever `take_output` returns. It answers PINGs by itself. Like the Go library
kubectl uses, it does no flow control (WINDOW_UPDATE and SETTINGS are read and ignored).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes (the ones this server sends or names).
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6

MAX_PAYLOAD = (1 << 24) - 1
HEADER_SIZE = 8

Headers = dict[str, list[str]]

# The SPDY/3 header-compression dictionary (draft 3, section 2.6.10.1): these words, each
# preceded by its length as a 32-bit big-endian integer, then the text below as it stands.
_DICTIONARY_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range",
    "referer", "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade",
    "user-agent", "vary", "via", "warning", "www-authenticate", "method", "get", "status",
    "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)
_DICTIONARY_TEXT = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    "502504505"
    "203 Non-Authoritative Information" "204 No Content" "301 Moved Permanently"
    "400 Bad Request" "401 Unauthorized" "403 Forbidden" "404 Not Found"
    "500 Internal Server Error" "501 Not Implemented" "503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    "application/xhtml+xml,text/plain,text/javascript,public"
    "privatemax-age=gzip,deflate,sdch"
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(
    struct.pack(">I", len(word)) + word.encode() for word in _DICTIONARY_WORDS
) + _DICTIONARY_TEXT.encode()


class ProtocolError(Exception):
    """The peer sent bytes that are not SPDY/3 (the connection cannot continue)."""


# --- frames -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class ControlFrame:
    """A control frame before its type-specific payload is interpreted."""
    type: int
    flags: int
    payload: bytes


def encode_data(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    if len(data) > MAX_PAYLOAD:
        raise ValueError("a DATA frame carries at most 2**24-1 bytes")
    return struct.pack(">II", stream_id & 0x7FFFFFFF,
                       ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def encode_control(frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("a control frame carries at most 2**24-1 bytes")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) \
        + payload


def split_frames(buffer: bytes) -> tuple[list[DataFrame | ControlFrame], bytes]:
    """Cut whole frames off the front of `buffer`; returns them and the incomplete rest."""
    frames: list[DataFrame | ControlFrame] = []
    offset = 0
    while len(buffer) - offset >= HEADER_SIZE:
        first, second = struct.unpack_from(">II", buffer, offset)
        length = second & 0xFFFFFF
        end = offset + HEADER_SIZE + length
        if end > len(buffer):
            break
        flags = second >> 24
        payload = bytes(buffer[offset + HEADER_SIZE:end])
        if first & 0x80000000:
            version = (first >> 16) & 0x7FFF
            if version != VERSION:
                raise ProtocolError(f"unsupported SPDY version {version}")
            frames.append(ControlFrame(first & 0xFFFF, flags, payload))
        else:
            frames.append(DataFrame(first & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN)))
        offset = end
    return frames, bytes(buffer[offset:])


# --- header blocks ----------------------------------------------------------------------

def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: names lowercased, several values NUL-joined."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        raw_name = name.lower().encode()
        raw_value = "\x00".join(values).encode()
        out += [struct.pack(">I", len(raw_name)), raw_name,
                struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(out)


def decode_header_block(block: bytes) -> Headers:
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        offset = 4
        headers: Headers = {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, offset)
            name = block[offset + 4:offset + 4 + n].decode()
            offset += 4 + n
            (n,) = struct.unpack_from(">I", block, offset)
            value = block[offset + 4:offset + 4 + n].decode()
            offset += 4 + n
            if offset > len(block):
                raise ProtocolError("header block shorter than its lengths say")
            headers.setdefault(name.lower(), []).extend(value.split("\x00"))
    except (struct.error, UnicodeDecodeError) as err:
        raise ProtocolError(f"malformed header block: {err}") from err
    if offset != len(block):
        raise ProtocolError("header block longer than its name/value pairs")
    return headers


class HeaderCompressor:
    """One direction's zlib context: every block is sync-flushed so the peer can decode it
    at once, and later blocks may refer back to earlier ones."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(level=9, zdict=DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._zlib.compress(block) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(zdict=DICTIONARY)

    def decompress(self, data: bytes) -> Headers:
        try:
            block = self._zlib.decompress(data)
        except zlib.error as err:
            raise ProtocolError(f"cannot decompress a header block: {err}") from err
        return decode_header_block(block)


# --- session ----------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamOpened:
    stream_id: int
    headers: Headers
    fin: bool  # the peer sends nothing on it (its half is already closed)


@dataclass(frozen=True)
class StreamData:
    stream_id: int
    data: bytes


@dataclass(frozen=True)
class StreamHalfClosed:
    """The peer will send nothing more on this stream (FIN)."""
    stream_id: int


@dataclass(frozen=True)
class StreamReset:
    stream_id: int
    status: int


@dataclass(frozen=True)
class GoneAway:
    last_stream_id: int


Event = StreamOpened | StreamData | StreamHalfClosed | StreamReset | GoneAway


@dataclass
class _Stream:
    remote_open: bool = True
    local_open: bool = True


@dataclass
class Session:
    """The server end of one SPDY/3.1 connection (streams are opened by the client)."""

    streams: dict[int, _Stream] = field(default_factory=dict)
    _buffer: bytes = b""
    _output: list[bytes] = field(default_factory=list)
    _inflate: HeaderDecompressor = field(default_factory=HeaderDecompressor)
    _deflate: HeaderCompressor = field(default_factory=HeaderCompressor)
    last_stream_id: int = 0

    # input

    def receive(self, data: bytes) -> list[Event]:
        frames, self._buffer = split_frames(self._buffer + data)
        events: list[Event] = []
        for frame in frames:
            if isinstance(frame, DataFrame):
                events += self._on_data(frame)
            else:
                events += self._on_control(frame)
        return events

    def _on_data(self, frame: DataFrame) -> list[Event]:
        stream = self.streams.get(frame.stream_id)
        if stream is None or not stream.remote_open:
            self.reset(frame.stream_id, INVALID_STREAM)
            return []
        events: list[Event] = []
        if frame.data:
            events.append(StreamData(frame.stream_id, frame.data))
        if frame.fin:
            stream.remote_open = False
            events.append(StreamHalfClosed(frame.stream_id))
            self._forget_if_done(frame.stream_id)
        return events

    def _on_control(self, frame: ControlFrame) -> list[Event]:
        p = frame.payload
        if frame.type == SYN_STREAM:
            if len(p) < 10:
                raise ProtocolError("SYN_STREAM too short")
            stream_id = struct.unpack_from(">I", p, 0)[0] & 0x7FFFFFFF
            headers = self._inflate.decompress(p[10:])
            fin = bool(frame.flags & FLAG_FIN)
            if stream_id == 0 or stream_id in self.streams or stream_id % 2 == 0:
                self.reset(stream_id, PROTOCOL_ERROR)
                return []
            self.last_stream_id = max(self.last_stream_id, stream_id)
            self.streams[stream_id] = _Stream(remote_open=not fin)
            return [StreamOpened(stream_id, headers, fin)]
        if frame.type == HEADERS or frame.type == SYN_REPLY:
            # Keep the decompression context in step even though these carry nothing we use.
            if len(p) >= 4:
                self._inflate.decompress(p[4:])
            return []
        if frame.type == RST_STREAM:
            if len(p) < 8:
                raise ProtocolError("RST_STREAM too short")
            stream_id, status = struct.unpack_from(">II", p, 0)
            stream_id &= 0x7FFFFFFF
            if self.streams.pop(stream_id, None) is None:
                return []
            return [StreamReset(stream_id, status)]
        if frame.type == PING:
            if len(p) != 4:
                raise ProtocolError("PING must carry 4 bytes")
            (ping_id,) = struct.unpack(">I", p)
            if ping_id % 2:  # the client's ping: echo it; ours (even) need no answer
                self._output.append(encode_control(PING, p))
            return []
        if frame.type == GOAWAY:
            last = struct.unpack_from(">I", p, 0)[0] & 0x7FFFFFFF if len(p) >= 4 else 0
            return [GoneAway(last)]
        # SETTINGS, WINDOW_UPDATE and unknown control frames: nothing to do.
        return []

    # output

    def reply(self, stream_id: int, headers: Headers | None = None, fin: bool = False) -> None:
        """Accept a stream the client opened (SYN_REPLY)."""
        block = self._deflate.compress(headers or {})
        self._output.append(encode_control(SYN_REPLY, struct.pack(">I", stream_id) + block,
                                           FLAG_FIN if fin else 0))
        if fin:
            self._close_local(stream_id)

    def send(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open:
            return
        for start in range(0, len(data), MAX_PAYLOAD):
            self._output.append(encode_data(stream_id, data[start:start + MAX_PAYLOAD]))

    def close(self, stream_id: int) -> None:
        """Half-close our side (an empty DATA frame with FIN), once."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open:
            return
        self._output.append(encode_data(stream_id, b"", fin=True))
        self._close_local(stream_id)

    def reset(self, stream_id: int, status: int = CANCEL) -> None:
        self.streams.pop(stream_id, None)
        if stream_id:
            self._output.append(encode_control(RST_STREAM,
                                               struct.pack(">II", stream_id, status)))

    def go_away(self, status: int = 0) -> None:
        self._output.append(encode_control(GOAWAY,
                                           struct.pack(">II", self.last_stream_id, status)))

    def take_output(self) -> bytes:
        out, self._output = b"".join(self._output), []
        return out

    def _close_local(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.local_open = False
            self._forget_if_done(stream_id)

    def _forget_if_done(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.remote_open and not stream.local_open:
            del self.streams[stream_id]
