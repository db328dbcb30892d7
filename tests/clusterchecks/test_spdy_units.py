"""The SPDY/3.1 codec and session (tests/equipment/localcluster/spdy.py), without a cluster.

KUBECTL_CAPTURE is what kubectl 1.37 really sent through the tunneled port-forward for two
`curl http://127.0.0.1:LOCAL/` runs (captured once from the test cluster): per connection an
error stream it half-closes at once, a data stream carrying the request, and a RST_STREAM when
it is done. Decoding it checks the dictionary and the shared compression context against the
Go implementation, not against our own encoder.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from tests.equipment.localcluster import spdy

KUBECTL_CAPTURE = bytes.fromhex(
    "800300010000003e0000000100000000000078f9e3c6a7c202253a48f95b044eea160616060c0c0c9c4590f8"
    "ca04a5634603704a2c294a4dcc851636aca9a0a800000000ffff0000000101000000800300010000001a0000"
    "0003000000000000826a26a418543225a25b02000000ffff000000030000004f474554202f20485454502f31"
    "2e310d0a486f73743a203132372e302e302e313a31383038300d0a557365722d4167656e743a206375726c2f"
    "372e38382e310d0a4163636570743a202a2f2a0d0a0d0a800300030000000800000003000000058003000100"
    "0000180000000500000000000082eac5612c7ef71802000000ffff0000000501000000800300010000001700"
    "000007000000000000c2aa199735687a01000000ffff000000070000004f474554202f20485454502f312e31"
    "0d0a486f73743a203132372e302e302e313a31383038300d0a557365722d4167656e743a206375726c2f372e"
    "38382e310d0a4163636570743a202a2f2a0d0a0d0a80030003000000080000000700000005"
)
REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nUser-Agent: curl/7.88.1\r\n"
           b"Accept: */*\r\n\r\n")


def _expected_events() -> list[spdy.Event]:
    events: list[spdy.Event] = []
    for request_id, error_id in (("0", 1), ("1", 5)):
        data_id = error_id + 2
        events += [
            spdy.StreamOpened(error_id, {"streamtype": ["error"], "port": ["8080"],
                                         "requestid": [request_id]}, False),
            spdy.StreamHalfClosed(error_id),
            spdy.StreamOpened(data_id, {"streamtype": ["data"], "port": ["8080"],
                                        "requestid": [request_id]}, False),
            spdy.StreamData(data_id, REQUEST),
            spdy.StreamReset(data_id, spdy.CANCEL),
        ]
    return events


def test_dictionary_is_the_one_kubectl_primes_zlib_with() -> None:
    # A zlib stream with a preset dictionary names it by its Adler-32 (bytes 2..6).
    first_block = KUBECTL_CAPTURE[18:]
    assert first_block[0] == 0x78 and first_block[1] & 0x20  # zlib, FDICT set
    assert struct.unpack(">I", first_block[2:6])[0] == zlib.adler32(spdy.DICTIONARY)
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b",utf-,*,enq=0.")


def test_session_decodes_kubectl_capture() -> None:
    session = spdy.Session()
    events = session.receive(KUBECTL_CAPTURE)
    assert [type(e) for e in events] == [type(e) for e in _expected_events()]
    # Header order is the peer's (a Go map), so compare as dictionaries.
    assert events == _expected_events()
    assert session.take_output() == b""


@pytest.mark.parametrize("size", [1, 3, 7, 64])
def test_session_reassembles_frames_split_anywhere(size: int) -> None:
    session = spdy.Session()
    events: list[spdy.Event] = []
    for start in range(0, len(KUBECTL_CAPTURE), size):
        events += session.receive(KUBECTL_CAPTURE[start:start + size])
    assert events == _expected_events()


def test_frame_layouts() -> None:
    assert spdy.encode_data(3, b"hi") == bytes.fromhex("00000003 00000002") + b"hi"
    assert spdy.encode_data(5, b"", fin=True) == bytes.fromhex("00000005 01000000")
    assert spdy.encode_control(spdy.PING, b"\x00\x00\x00\x07") == \
        bytes.fromhex("80030006 00000004 00000007")
    frames, rest = spdy.split_frames(spdy.encode_data(1, b"abc", fin=True) + b"\x80\x03")
    assert frames == [spdy.DataFrame(1, b"abc", True)] and rest == b"\x80\x03"


def test_header_blocks_share_one_context_per_direction() -> None:
    deflate, inflate = spdy.HeaderCompressor(), spdy.HeaderDecompressor()
    blocks = [{"streamtype": ["error"], "port": ["8080"], "requestid": ["0"]},
              {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]},
              {"set-cookie": ["a=1", "b=2"]},
              {}]
    encoded = [deflate.compress(b) for b in blocks]
    # Later blocks lean on earlier ones: the second is smaller than the first on its own.
    assert len(encoded[1]) < len(spdy.HeaderCompressor().compress(blocks[1]))
    assert [inflate.decompress(e) for e in encoded] == blocks
    # A fresh context cannot read a block that refers back into another one.
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderDecompressor().decompress(encoded[1])


def test_header_names_go_out_lowercase() -> None:
    block = spdy.encode_header_block({"streamType": ["data"]})
    assert block == struct.pack(">II", 1, 10) + b"streamtype" + struct.pack(">I", 4) + b"data"
    assert spdy.decode_header_block(block) == {"streamtype": ["data"]}


def test_malformed_input_is_a_protocol_error() -> None:
    with pytest.raises(spdy.ProtocolError):
        spdy.decode_header_block(struct.pack(">II", 1, 50) + b"short")
    with pytest.raises(spdy.ProtocolError):
        spdy.decode_header_block(struct.pack(">I", 0) + b"trailing")
    with pytest.raises(spdy.ProtocolError):  # SPDY/2 control frame
        spdy.split_frames(bytes.fromhex("80020006 00000004 00000001"))


def _parse_output(data: bytes) -> list[spdy.DataFrame | spdy.ControlFrame]:
    frames, rest = spdy.split_frames(data)
    assert rest == b""
    return frames


def test_session_replies_sends_and_half_closes() -> None:
    session = spdy.Session()
    session.receive(KUBECTL_CAPTURE[:KUBECTL_CAPTURE.index(bytes.fromhex("000000030000004f"))])
    session.reply(1)
    session.reply(3)
    session.send(3, b"HTTP/1.0 200 OK\r\n\r\n")
    session.close(3)
    session.close(3)  # only one FIN
    session.send(3, b"after FIN")  # dropped
    session.close(1)
    frames = _parse_output(session.take_output())
    inflate = spdy.HeaderDecompressor()
    replies = [f for f in frames if isinstance(f, spdy.ControlFrame)]
    assert [f.type for f in replies] == [spdy.SYN_REPLY, spdy.SYN_REPLY]
    assert [struct.unpack(">I", f.payload[:4])[0] for f in replies] == [1, 3]
    assert [inflate.decompress(f.payload[4:]) for f in replies] == [{}, {}]
    data = [f for f in frames if isinstance(f, spdy.DataFrame)]
    assert data == [spdy.DataFrame(3, b"HTTP/1.0 200 OK\r\n\r\n"), spdy.DataFrame(3, b"", True),
                    spdy.DataFrame(1, b"", True)]
    # Stream 1 was half-closed by both sides: the session forgets it; 3 is still readable.
    assert set(session.streams) == {3}


def test_session_answers_client_pings_only() -> None:
    session = spdy.Session()
    session.receive(spdy.encode_control(spdy.PING, struct.pack(">I", 7)))
    assert session.take_output() == spdy.encode_control(spdy.PING, struct.pack(">I", 7))
    session.receive(spdy.encode_control(spdy.PING, struct.pack(">I", 8)))
    assert session.take_output() == b""


def test_data_on_an_unknown_stream_is_reset() -> None:
    session = spdy.Session()
    assert session.receive(spdy.encode_data(9, b"x")) == []
    assert session.take_output() == spdy.encode_control(
        spdy.RST_STREAM, struct.pack(">II", 9, spdy.INVALID_STREAM))


def test_goaway_and_ignored_frames() -> None:
    session = spdy.Session()
    settings = spdy.encode_control(spdy.SETTINGS, struct.pack(">III", 1, 7, 65536))
    window = spdy.encode_control(spdy.WINDOW_UPDATE, struct.pack(">II", 1, 1000))
    goaway = spdy.encode_control(spdy.GOAWAY, struct.pack(">II", 5, 0))
    assert session.receive(settings + window + goaway) == [spdy.GoneAway(5)]
