"""Cluster DNS for the local test cluster, after kubernetes/dns docs/specification.md.

- `<svc>.<ns>.svc.cluster.local` A: the ClusterIP; for a headless Service the ready endpoint
  addresses (none ready: no records).
- `_<port>._<proto>.<svc>.<ns>.svc.cluster.local` SRV for every named port (target: the
  Service name; for a headless Service one record per ready address, its dashed-IP name).
- PTR `d.c.b.a.in-addr.arpa` for ClusterIPs -> `<svc>.<ns>.svc.cluster.local`.
- A name that exists without records of the asked type: NOERROR, no answer (NODATA); any other
  name: NXDOMAIN. Authoritative, no recursion.

Served on UDP and TCP port 53 of the node's gateway address (inside the cluster network).
Every pod's /etc/resolv.conf (bind-mounted from /etc/netns/<netns>/resolv.conf by
`ip netns exec`) points at it with the search path `<ns>.svc.cluster.local svc.cluster.local
cluster.local` and `options ndots:5`, as the kubelet writes for dnsPolicy ClusterFirst.

`answer()` is pure (bytes in, bytes out); `DnsServer` does the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Obj = dict[str, Any]
DOMAIN = "cluster.local"
TTL = 5
A, PTR, SRV, AAAA = 1, 12, 33, 28
IN = 1
NOERROR, FORMERR, NXDOMAIN, NOTIMP = 0, 1, 3, 4
NETNS_ETC = Path("/etc/netns")
IP = shutil.which("ip") or "/usr/sbin/ip"


@dataclass(frozen=True)
class Record:
    rtype: int
    data: bytes


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def decode_name(msg: bytes, pos: int) -> tuple[str, int]:
    """A (possibly compressed) name at pos -> (dotted name, position after it)."""
    labels: list[str] = []
    end = -1
    for _ in range(128):
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        pos += 1
        if length == 0:
            return ".".join(labels), end if end >= 0 else pos
        labels.append(msg[pos:pos + length].decode("ascii", "replace"))
        pos += length
    raise ValueError("name too long or looped")


def _ready_addresses(endpoints: Obj | None) -> list[str]:
    out: list[str] = []
    for subset in (endpoints or {}).get("subsets") or []:
        out += [a["ip"] for a in subset.get("addresses") or [] if a.get("ip")]
    return out


def records(qname: str, qtype: int, services: Iterable[Obj],
            endpoints: Iterable[Obj]) -> list[Record] | None:
    """The answer records, or None when the name does not exist (NXDOMAIN)."""
    name = qname.lower().rstrip(".")
    svcs = {(s["metadata"].get("namespace", "default"), s["metadata"]["name"]): s
            for s in services}
    eps = {(e["metadata"].get("namespace", "default"), e["metadata"]["name"]): e
           for e in endpoints}
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        ip = ".".join(reversed(parts))
        for (ns, svc_name), svc in svcs.items():
            if svc.get("spec", {}).get("clusterIP") == ip:
                target = f"{svc_name}.{ns}.svc.{DOMAIN}"
                return [Record(PTR, encode_name(target))] if qtype == PTR else []
        return None
    if name in (DOMAIN, f"svc.{DOMAIN}"):
        return []
    suffix = f".svc.{DOMAIN}"
    if not name.endswith(suffix):
        return None
    labels = name[: -len(suffix)].split(".")
    if len(labels) == 1:  # <ns>.svc.cluster.local: exists when a Service lives there
        return [] if any(ns == labels[0] for ns, _ in svcs) else None
    port_name = proto = None
    if len(labels) == 4 and labels[0].startswith("_") and labels[1].startswith("_"):
        port_name, proto = labels[0][1:], labels[1][1:].upper()
        labels = labels[2:]
    if len(labels) != 2:
        return None
    svc_name, ns = labels
    svc = svcs.get((ns, svc_name))
    if svc is None:
        return None
    spec = svc.get("spec", {})
    cluster_ip = spec.get("clusterIP")
    headless = cluster_ip in (None, "", "None")
    ready = _ready_addresses(eps.get((ns, svc_name)))
    fqdn = f"{svc_name}.{ns}.svc.{DOMAIN}"
    if port_name is not None:
        ports = [p for p in spec.get("ports") or []
                 if p.get("name") == port_name and (p.get("protocol") or "TCP") == proto]
        if not ports:
            return None
        if qtype != SRV:
            return []
        port = int(ports[0]["port"])
        targets = ([f"{ip.replace('.', '-')}.{fqdn}" for ip in ready] if headless else [fqdn])
        return [Record(SRV, struct.pack("!HHH", 0, 100, port) + encode_name(t))
                for t in targets]
    if qtype != A:
        return []
    addresses = ready if headless else [str(cluster_ip)]
    return [Record(A, ipaddress.IPv4Address(a).packed) for a in addresses
            if ipaddress.ip_address(a).version == 4]


def answer(query: bytes, services: Iterable[Obj], endpoints: Iterable[Obj]) -> bytes:
    """The response to one DNS query message."""
    if len(query) < 12:
        raise ValueError("short DNS message")
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    rd = flags & 0x0100
    opcode = (flags >> 11) & 0xF

    def header(rcode: int, qd: int, an: int) -> bytes:
        return struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | (opcode << 11) | rcode,
                           qd, an, 0, 0)

    if opcode != 0 or qdcount != 1:
        return header(NOTIMP if opcode else FORMERR, 0, 0)
    try:
        qname, pos = decode_name(query, 12)
        qtype, qclass = struct.unpack("!HH", query[pos:pos + 4])
    except (ValueError, IndexError, struct.error):
        return header(FORMERR, 0, 0)
    question = query[12:pos + 4]
    found = records(qname, qtype, services, endpoints) if qclass == IN else None
    if found is None:
        return header(NXDOMAIN, 1, 0) + question
    body = b""
    for rec in found:
        body += b"\xc0\x0c" + struct.pack("!HHIH", rec.rtype, IN, TTL, len(rec.data)) + rec.data
    return header(NOERROR, 1, len(found)) + question + body


def resolv_conf(namespace: str, nameserver: str) -> str:
    return (f"search {namespace}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}\n"
            f"nameserver {nameserver}\n"
            "options ndots:5\n")


def write_resolv_conf(netns: str, namespace: str, nameserver: str) -> None:
    """/etc/netns/<netns>/resolv.conf, which `ip netns exec` bind-mounts over /etc/resolv.conf."""
    directory = NETNS_ETC / netns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "resolv.conf").write_text(resolv_conf(namespace, nameserver))


def remove_resolv_conf(netns: str) -> None:
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


def netns_exec(netns: str) -> list[str]:
    """The argv prefix that runs a pod's process in its netns with its resolv.conf."""
    return [IP, "netns", "exec", netns]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, respond: Callable[[bytes], bytes]) -> None:
        self._respond = respond
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:  # uvloop's is no DatagramTransport
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(ValueError):
            if self._transport is not None:
                self._transport.sendto(self._respond(data), addr)


class DnsServer:
    """Answers from the store's Services and Endpoints at query time."""

    def __init__(self, list_services: Callable[[], list[Obj]],
                 list_endpoints: Callable[[], list[Obj]], host: str, port: int = 53) -> None:
        self._services = list_services
        self._endpoints = list_endpoints
        self.host = host
        self.port = port
        self._udp: Any = None
        self._tcp: asyncio.AbstractServer | None = None

    def respond(self, query: bytes) -> bytes:
        return answer(query, self._services(), self._endpoints())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.respond), local_addr=(self.host, self.port))
        self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port)

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.respond(await reader.readexactly(length))
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
