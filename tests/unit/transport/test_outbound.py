"""Outbound's pure parts: SOCKS5 messages and auth, HTTP proxy heads, --forward and the
service-link rewrite, the mode choice, torsocks' config; the test cluster's DNS answers."""

from __future__ import annotations

import base64
import struct

import pytest

from bridge.errors import BridgeError
from bridge.transport.outbound import forwards, httpproxy, inject, socks5
from sidecar import protocol
from tests.equipment.localcluster import dns


# -- SOCKS5 ---------------------------------------------------------------------------------
def test_greeting_needs_all_its_bytes_and_only_user_pass_is_accepted() -> None:
    assert socks5.parse_greeting(b"\x05") is None
    assert socks5.parse_greeting(b"\x05\x02\x00") is None
    assert socks5.parse_greeting(b"\x05\x02\x00\x02rest") == ((0, 2), 4)
    assert socks5.choose_method((0, 2)) == socks5.METHOD_USER_PASS
    assert socks5.choose_method((0,)) == socks5.METHOD_NONE_ACCEPTABLE
    with pytest.raises(socks5.Malformed):
        socks5.parse_greeting(b"\x04\x01\x00")


def test_user_pass_parsing_and_comparison() -> None:
    msg = b"\x01\x04user\x06secret"
    assert socks5.parse_user_pass(msg[:-1]) is None
    assert socks5.parse_user_pass(msg) == ((b"user", b"secret"), len(msg))
    want = (b"user", b"secret")
    assert socks5.credentials_match((b"user", b"secret"), want)
    assert not socks5.credentials_match((b"user", b"secreT"), want)
    assert not socks5.credentials_match((b"", b""), want)
    assert socks5.auth_reply(True) == b"\x01\x00" and socks5.auth_reply(False) == b"\x01\x01"


def test_requests_of_each_address_type() -> None:
    v4 = b"\x05\x01\x00\x01" + bytes([10, 96, 0, 5]) + struct.pack("!H", 80)
    assert socks5.parse_request(v4) == (socks5.Request(1, 1, "10.96.0.5", 80), 10)
    assert socks5.parse_request(v4[:-1]) is None
    name = b"\x05\x01\x00\x03\x06orders" + struct.pack("!H", 8080)
    assert socks5.parse_request(name) == (socks5.Request(1, 3, "orders", 8080), len(name))
    v6 = b"\x05\x01\x00\x04" + bytes(15) + b"\x01" + struct.pack("!H", 22)
    assert socks5.parse_request(v6) == (socks5.Request(1, 4, "::1", 22), 22)


def test_torsocks_padded_resolve_requests() -> None:
    # torsocks sends RESOLVE with a fixed 255-byte name field and no port, RESOLVE_PTR with a
    # 16-byte address field (src/common/socks5.h); the padding is ignored.
    resolve = b"\x05\xf0\x00\x03\x06orders" + bytes(255 - 6)
    req, _ = socks5.parse_request(resolve) or (None, 0)
    assert req is not None and (req.command, req.host) == (socks5.CMD_RESOLVE, "orders")
    ptr = b"\x05\xf1\x00\x01" + bytes([10, 96, 0, 5]) + bytes(12)
    req, _ = socks5.parse_request(ptr) or (None, 0)
    assert req is not None and (req.command, req.host) == (socks5.CMD_RESOLVE_PTR, "10.96.0.5")


def test_replies_have_the_fixed_sizes_torsocks_reads() -> None:
    assert len(socks5.reply(0)) == 10  # IPv4 / name CONNECT
    assert len(socks5.reply(0, "::")) == 22  # IPv6 CONNECT
    assert socks5.reply(0, "10.96.0.5")[4:8] == bytes([10, 96, 0, 5])
    assert socks5.name_reply("a.b")[:5] == b"\x05\x00\x00\x03\x03"


@pytest.mark.parametrize(("reason", "code"), [
    (protocol.REASON_REFUSED, socks5.REP_CONNECTION_REFUSED),
    (protocol.REASON_TIMEOUT, socks5.REP_TTL_EXPIRED),
    (protocol.REASON_NET_UNREACHABLE, socks5.REP_NETWORK_UNREACHABLE),
    (protocol.REASON_HOST_UNREACHABLE, socks5.REP_HOST_UNREACHABLE),
    (protocol.REASON_NXDOMAIN, socks5.REP_HOST_UNREACHABLE),
    (protocol.REASON_NOT_ALLOWED, socks5.REP_NOT_ALLOWED),
    (protocol.REASON_FAILED, socks5.REP_GENERAL_FAILURE),
    ("a-code-from-a-newer-sidecar", socks5.REP_GENERAL_FAILURE),
])
def test_pod_failures_map_to_ordinary_errors(reason: str, code: int) -> None:
    assert socks5.failure_for_reason(reason) == code


def test_every_reason_code_has_its_reply() -> None:
    unmapped = [r for r in protocol.REASONS if r != protocol.REASON_FAILED
                and socks5.failure_for_reason(r) == socks5.REP_GENERAL_FAILURE]
    assert unmapped == []


# -- HTTP proxy -------------------------------------------------------------------------------
def _auth(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def test_http_heads_auth_and_targets() -> None:
    raw = (b"GET http://orders:8080/a?b=1 HTTP/1.1\r\nHost: orders:8080\r\n"
           b"Proxy-Authorization: " + _auth("u", "p").encode() + b"\r\n"
           b"Proxy-Connection: keep-alive\r\n\r\nBODY")
    assert httpproxy.parse_head(raw[:20]) is None
    head, used = httpproxy.parse_head(raw) or (None, 0)
    assert head is not None and raw[used:] == b"BODY"
    assert httpproxy.authorized(head, "u", "p")
    assert not httpproxy.authorized(head, "u", "x")
    host, port, out = httpproxy.forward_target(head)
    assert (host, port) == ("orders", 8080)
    assert out.startswith(b"GET /a?b=1 HTTP/1.1\r\n")
    assert b"Proxy-" not in out and b"Connection: close\r\n" in out
    conn, _ = httpproxy.parse_head(b"CONNECT orders.shop:443 HTTP/1.1\r\n\r\n") or (None, 0)
    assert conn is not None and httpproxy.connect_target(conn) == ("orders.shop", 443)
    with pytest.raises(httpproxy.BadRequest):
        httpproxy.parse_head(b"nonsense\r\n\r\n")


# -- --forward ---------------------------------------------------------------------------------
def test_forward_specs() -> None:
    assert forwards.parse("orders:80") == forwards.Forward("orders", 80, 0)
    assert forwards.parse("orders.shop:80:9000") == forwards.Forward("orders.shop", 80, 9000)
    for bad in ("orders", "Orders:80", "orders:0", "orders:80:x", "a:b:c:d"):
        with pytest.raises(BridgeError, match="nothing was changed"):
            forwards.parse(bad)


def test_forward_rewrites_only_the_matching_service_links() -> None:
    env = {
        "ORDERS_DB_SERVICE_HOST": "10.96.0.7", "ORDERS_DB_SERVICE_PORT": "5432",
        "ORDERS_DB_SERVICE_PORT_PG": "5432", "ORDERS_DB_SERVICE_PORT_METRICS": "9187",
        "ORDERS_DB_PORT": "tcp://10.96.0.7:5432",
        "ORDERS_DB_PORT_5432_TCP": "tcp://10.96.0.7:5432",
        "ORDERS_DB_PORT_5432_TCP_ADDR": "10.96.0.7", "ORDERS_DB_PORT_5432_TCP_PORT": "5432",
        "ORDERS_DB_PORT_5432_TCP_PROTO": "tcp",
        "ORDERS_DB_PORT_9187_TCP_PORT": "9187", "OTHER_SERVICE_HOST": "10.96.0.8",
    }
    out = forwards.rewrite(env, forwards.Forward("orders-db", 5432, 0), 41000)
    assert out == {
        "ORDERS_DB_SERVICE_HOST": "127.0.0.1", "ORDERS_DB_SERVICE_PORT": "41000",
        "ORDERS_DB_SERVICE_PORT_PG": "41000", "ORDERS_DB_PORT": "tcp://127.0.0.1:41000",
        "ORDERS_DB_PORT_5432_TCP": "tcp://127.0.0.1:41000",
        "ORDERS_DB_PORT_5432_TCP_ADDR": "127.0.0.1", "ORDERS_DB_PORT_5432_TCP_PORT": "41000",
    }


# -- mode and torsocks ------------------------------------------------------------------------
def test_mode_choice() -> None:
    assert inject.choose_mode(None, "/usr/bin/torsocks") == (inject.Mode.INJECT, None)
    mode, hint = inject.choose_mode(None, None)
    assert mode is inject.Mode.PROXY and hint and "install torsocks" in hint
    assert inject.choose_mode("proxy", None) == (inject.Mode.PROXY, None)
    with pytest.raises(BridgeError, match="needs torsocks.*nothing was changed"):
        inject.choose_mode("inject", None)


def test_torsocks_config_names_the_session_proxy() -> None:
    text = inject.config_text("127.0.0.1", 4242, "u", "p")
    lines = set(text.splitlines())
    assert {"TorAddress 127.0.0.1", "TorPort 4242", "SOCKS5Username u", "SOCKS5Password p",
            "AllowInbound 1", "AllowOutboundLocalhost 1"} <= lines
    env = inject.proxy_env("socks5h://x", "http://y")
    assert env["ALL_PROXY"] == env["all_proxy"] == "socks5h://x"
    assert "localhost" in env["NO_PROXY"] and "127.0.0.1" in env["no_proxy"]


# -- the test cluster's DNS ------------------------------------------------------------------
SERVICES = [
    {"metadata": {"namespace": "shop", "name": "orders"},
     "spec": {"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80}]}},
    {"metadata": {"namespace": "shop", "name": "db"},
     "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}},
]
ENDPOINTS = [{"metadata": {"namespace": "shop", "name": "db"},
              "subsets": [{"addresses": [{"ip": "10.244.0.7"}],
                           "notReadyAddresses": [{"ip": "10.244.0.8"}]}]}]


def _query(name: str, qtype: int) -> bytes:
    return (struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + dns.encode_name(name)
            + struct.pack("!HH", qtype, 1))


def _rcode_and_answers(name: str, qtype: int) -> tuple[int, int, bytes]:
    msg = dns.answer(_query(name, qtype), SERVICES, ENDPOINTS)
    _id, flags, _qd, an = struct.unpack("!HHHH", msg[:8])
    return flags & 0xF, an, msg


def test_dns_a_headless_srv_ptr_nxdomain() -> None:
    rcode, an, msg = _rcode_and_answers("orders.shop.svc.cluster.local", dns.A)
    assert (rcode, an) == (0, 1) and msg.endswith(bytes([10, 96, 0, 5]))
    rcode, an, msg = _rcode_and_answers("db.shop.svc.cluster.local", dns.A)
    assert (rcode, an) == (0, 1) and msg.endswith(bytes([10, 244, 0, 7]))  # ready only
    rcode, an, msg = _rcode_and_answers("_http._tcp.orders.shop.svc.cluster.local", dns.SRV)
    assert (rcode, an) == (0, 1) and struct.pack("!HHH", 0, 100, 80) in msg
    rcode, an, msg = _rcode_and_answers("5.0.96.10.in-addr.arpa", dns.PTR)
    assert (rcode, an) == (0, 1) and dns.encode_name("orders.shop.svc.cluster.local") in msg
    assert _rcode_and_answers("orders.shop.svc.cluster.local", dns.AAAA)[:2] == (0, 0)
    assert _rcode_and_answers("nope.shop.svc.cluster.local", dns.A)[:2] == (3, 0)
    assert _rcode_and_answers("orders.shop.svc.cluster.local.shop.svc.cluster.local",
                              dns.A)[:2] == (3, 0)
    assert _rcode_and_answers("example.com", dns.A)[:2] == (3, 0)
    assert dns.resolv_conf("shop", "10.244.0.1").splitlines() == [
        "search shop.svc.cluster.local svc.cluster.local cluster.local",
        "nameserver 10.244.0.1", "options ndots:5"]


# -- the sidecar's resolve commands (pure parts) ---------------------------------------------
def test_sidecar_resolve_command_parsing() -> None:
    from sidecar import protocol, resolve

    assert resolve.parse("resolve orders.shop") == (protocol.CMD_RESOLVE, "orders.shop")
    assert resolve.parse("resolve-ptr 10.96.0.5") == (protocol.CMD_RESOLVE_PTR, "10.96.0.5")
    assert resolve.parse("env") is None
    assert resolve.problem(protocol.CMD_RESOLVE, "orders.shop.svc.cluster.local") is None
    for bad in ("", "a b", "x;rm -rf", "a" * 300, "-lead"):
        assert resolve.problem(protocol.CMD_RESOLVE, bad) is not None, bad
    assert resolve.problem(protocol.CMD_RESOLVE_PTR, "10.96.0.5") is None
    assert resolve.problem(protocol.CMD_RESOLVE_PTR, "orders") is not None


def test_a_forward_keeps_the_pods_connections_on_even_with_outbound_none() -> None:
    """--forward connections leave from the pod (direct-tcpip): with --outbound none the
    sidecar must still open them, or every forwarded connection is closed unanswered."""
    from bridge.swap.options import SwapOptions
    from bridge.swap.request import build

    def asked(outbound: str, forwards: tuple[str, ...] = ()) -> bool:
        return build(SwapOptions("hello", outbound=outbound, forwards=forwards)).direct_tcpip

    assert asked("none", ("orders:80:18080",)) is True
    assert asked("none") is False
    assert asked("proxy") is True


def test_the_attach_hint_scopes_the_variables_in_the_files_syntax() -> None:
    from bridge.transport.outbound import Outbound

    ob = Outbound(mode=inject.Mode.PROXY, user="u", password="p", port=9)
    fish = ob.attach_hint(".bridge/hello.fish", "fish")
    assert "`fish -c 'source \\'.bridge/hello.fish\\'; and exec YOUR_COMMAND'`" in fish
    assert "set -a" not in ob.attach_hint(".bridge/hello.env")  # dotenv: never sourced
    assert "`dotenv -f .bridge/hello.env run -- YOUR_COMMAND`" in ob.attach_hint(
        ".bridge/hello.env")
    assert Outbound(mode=inject.Mode.NONE, user="u", password="p").attach_hint("x.env") == ""
