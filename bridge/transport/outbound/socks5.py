"""SOCKS5 (RFC 1928) with username/password auth (RFC 1929) and Tor's RESOLVE / RESOLVE_PTR
extensions (tor's socks-extensions.txt; what torsocks sends for getaddrinfo/gethostbyaddr).

Pure: each `parse_*` takes the bytes received so far and returns None while they are
incomplete, else (value, bytes consumed); a malformed message raises Malformed. The server
module does the reading and writing.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from dataclasses import dataclass

from sidecar import protocol

VERSION = 5
AUTH_VERSION = 1
METHOD_NO_AUTH = 0x00
METHOD_USER_PASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF

CMD_CONNECT = 0x01
CMD_RESOLVE = 0xF0  # Tor extension: name -> address
CMD_RESOLVE_PTR = 0xF1  # Tor extension: address -> name

ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

REP_SUCCEEDED = 0x00
REP_GENERAL_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_CONNECTION_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06  # torsocks maps it to ETIMEDOUT
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Malformed(ValueError):
    """The peer sent something that is not SOCKS5; the connection is closed."""


@dataclass(frozen=True)
class Request:
    command: int
    atyp: int
    host: str  # a name (ATYP_DOMAIN) or an address in text form
    port: int


def parse_greeting(buf: bytes) -> tuple[tuple[int, ...], int] | None:
    """VER NMETHODS METHODS... -> (methods, consumed)."""
    if len(buf) < 2:
        return None
    if buf[0] != VERSION:
        raise Malformed(f"not SOCKS5 (version byte {buf[0]})")
    end = 2 + buf[1]
    if len(buf) < end:
        return None
    return tuple(buf[2:end]), end


def choose_method(methods: tuple[int, ...]) -> int:
    """This server only accepts username/password."""
    return METHOD_USER_PASS if METHOD_USER_PASS in methods else METHOD_NONE_ACCEPTABLE


def parse_user_pass(buf: bytes) -> tuple[tuple[bytes, bytes], int] | None:
    """VER ULEN UNAME PLEN PASSWD -> ((user, password), consumed)."""
    if len(buf) < 2:
        return None
    if buf[0] != AUTH_VERSION:
        raise Malformed(f"bad username/password auth version {buf[0]}")
    ulen = buf[1]
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    return (bytes(buf[2:2 + ulen]), bytes(buf[3 + ulen:end])), end


def credentials_match(got: tuple[bytes, bytes], want: tuple[bytes, bytes]) -> bool:
    """Constant-time comparison of both fields."""
    user_ok = hmac.compare_digest(got[0], want[0])
    pass_ok = hmac.compare_digest(got[1], want[1])
    return user_ok and pass_ok


def auth_reply(ok: bool) -> bytes:
    return bytes([AUTH_VERSION, 0 if ok else 1])


def parse_request(buf: bytes) -> tuple[Request, int] | None:
    """VER CMD RSV ATYP DST.ADDR DST.PORT -> (Request, consumed).

    torsocks pads RESOLVE to a fixed 255-byte name field and RESOLVE_PTR to a 16-byte address
    field and sends no port; the server discards whatever follows the request, so the
    padding is harmless (the port read here is then part of it)."""
    if len(buf) < 5:
        return None
    ver, cmd, _rsv, atyp = buf[0], buf[1], buf[2], buf[3]
    if ver != VERSION:
        raise Malformed(f"not SOCKS5 (version byte {ver})")
    if atyp == ATYP_IPV4:
        end = 4 + 4
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv4Address(bytes(buf[4:end])))
    elif atyp == ATYP_IPV6:
        end = 4 + 16
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[4:end])))
    elif atyp == ATYP_DOMAIN:
        end = 5 + buf[4]
        if len(buf) < end:
            return None
        try:
            host = bytes(buf[5:end]).decode("ascii")
        except UnicodeDecodeError:
            raise Malformed("host name is not ASCII") from None
        if not host:
            raise Malformed("empty host name")
    else:
        raise Malformed(f"unknown address type {atyp}")
    if cmd in (CMD_RESOLVE, CMD_RESOLVE_PTR) and len(buf) < end + 2:
        # A RESOLVE may come without a port (torsocks' PTR request, once its padding ends).
        return Request(cmd, atyp, host, 0), len(buf)
    if len(buf) < end + 2:
        return None
    (port,) = struct.unpack("!H", bytes(buf[end:end + 2]))
    return Request(cmd, atyp, host, port), end + 2


def reply(rep: int, bound: str = "0.0.0.0", port: int = 0) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT with an address (IPv4 or IPv6) bound.

    torsocks reads a fixed-size reply (10 bytes for an IPv4 or name CONNECT, 22 for IPv6),
    so the bound address is always an address, never a name."""
    addr = ipaddress.ip_address(bound)
    atyp = ATYP_IPV4 if addr.version == 4 else ATYP_IPV6
    return bytes([VERSION, rep, 0, atyp]) + addr.packed + struct.pack("!H", port)


def name_reply(name: str) -> bytes:
    """RESOLVE_PTR success: the name as ATYP_DOMAIN."""
    raw = name.encode("ascii", "replace")[:255]
    return bytes([VERSION, REP_SUCCEEDED, 0, ATYP_DOMAIN, len(raw)]) + raw + b"\0\0"


# The reply for each reason code the sidecar sends (sidecar.protocol.REASON_*), chosen so
# clients raise their ordinary error: refused -> ECONNREFUSED, timeout -> ETIMEDOUT (torsocks).
_REPLY_FOR_REASON = {
    protocol.REASON_REFUSED: REP_CONNECTION_REFUSED,
    protocol.REASON_TIMEOUT: REP_TTL_EXPIRED,
    protocol.REASON_NET_UNREACHABLE: REP_NETWORK_UNREACHABLE,
    protocol.REASON_HOST_UNREACHABLE: REP_HOST_UNREACHABLE,
    protocol.REASON_NXDOMAIN: REP_HOST_UNREACHABLE,
    protocol.REASON_INVALID: REP_HOST_UNREACHABLE,
    protocol.REASON_NOT_ALLOWED: REP_NOT_ALLOWED,
}


def failure_for_reason(reason: str) -> int:
    """The reply code for why the pod could not connect (a sidecar reason code)."""
    return _REPLY_FOR_REASON.get(reason, REP_GENERAL_FAILURE)
