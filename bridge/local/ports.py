"""Who listens on the laptop's forwarded ports (issue 13 item 7, issue 19 item 6, issue 21
item 2: the cluster's requests must reach the developer's service, nobody else's).

The cluster's requests for a port come out of the tunnel at a local address. Whoever listens
there gets them: another user of the machine (with their credentials), or the developer's own
forgotten server while the command failed to bind. So:

- before the swap (nothing changed yet), `before_swap` names every listener already on a
  forwarded port: another user's is refused in both modes; the user's own is refused when a
  command will be started (it is not the command), and said in attach mode (it may be the
  service the developer started for this session);
- in command mode the traffic is handed over only once the listener on each port belongs to
  the command (its process tree, or a process of the user's started since the command:
  `command_pids`, `tree_hosts`), and goes to the address it listens on (127.0.0.1, or ::1
  when it listens on IPv6 only), so a listener of the other address family gets nothing;
- while the session lasts, in both modes, every forwarded connection is proven before a byte
  of the cluster's goes into it (`peer_verdict`): the socket that accepted it, found in the
  kernel's table by its addresses, must belong to the user. A poll of the listeners (once a
  second) left a window in which another user could bind the port and get requests.

The decisions are pure functions of a snapshot of the machine's listening sockets;
`listeners` takes the snapshot (Linux, psutil). A socket whose process cannot be inspected
belongs to another user: an unprivileged user can always inspect their own processes.
`accepting_socket` asks the kernel for the one socket at the other end of a connection
(sock_diag), or reads its TCP table (/proc/net/tcp, tcp6: the uid column is the socket
owner's, no process scan needed). Off Linux none of this can be told: the ports are
not checked (`inspectable`).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import psutil

LOOPBACK_OR_ANY = {"127.0.0.1", "0.0.0.0", "::", "::1", "::ffff:127.0.0.1", ""}
IPV4_REACHING_LOOPBACK = {"127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1", ""}
IPV6_REACHING_LOOPBACK = {"::1", "::"}
ADVICE = "stop it or pick another local port with --port REMOTE:LOCAL"
TCP_TIME_WAIT = 6  # /proc/net/tcp's `st` column (include/net/tcp_states.h)
TCP_LISTEN = 10


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int | None  # None: not inspectable (another user's process)
    uid: int | None  # the process's real uid, when known
    name: str = ""  # the process's name, when known


def where(item: Listener) -> str:
    host = item.address or "0.0.0.0"
    return f"[{host}]:{item.port}" if ":" in host else f"{host}:{item.port}"


def squatters(ports: Sequence[int], uid: int, found: Iterable[Listener]) -> dict[int, Listener]:
    """The ports of `ports` on which a listener reachable at loopback belongs to someone
    other than `uid` (root's listeners count as foreign too, unless we are root)."""
    wanted = set(ports)
    out: dict[int, Listener] = {}
    for item in found:
        if item.port in wanted and item.address in LOOPBACK_OR_ANY and item.uid != uid:
            out.setdefault(item.port, item)
    return out


def own_listeners(ports: Sequence[int], uid: int, found: Iterable[Listener],
                  exclude: Collection[int] = ()) -> dict[int, Listener]:
    """The ports of `ports` on which a process of `uid` (not one of the pids `exclude`)
    listens at an address reachable at loopback."""
    wanted = set(ports)
    out: dict[int, Listener] = {}
    for item in found:
        if (item.port in wanted and item.address in LOOPBACK_OR_ANY and item.uid == uid
                and item.pid not in exclude):
            out.setdefault(item.port, item)
    return out


def _foreign_line(taken: dict[int, Listener]) -> str:
    shown = ", ".join(
        f"{where(item)} ({'pid ' + str(item.pid) if item.pid else 'a process'} of "
        f"{'uid ' + str(item.uid) if item.uid is not None else 'another user'})"
        for _, item in sorted(taken.items()))
    return (f"another user listens on {shown}: the cluster's requests would go to them; "
            "stop that listener or pick another local port with --port REMOTE:LOCAL")


def _own_shown(taken: dict[int, Listener]) -> str:
    return ", ".join(f"{where(item)} (pid {item.pid}{', ' + item.name if item.name else ''})"
                     for _, item in sorted(taken.items()))


def before_swap(ports: Sequence[int], uid: int, found: Iterable[Listener], *,
                command: bool) -> tuple[str, str]:
    """(refusal, note) for the forwarded `ports` before anything changes: a refusal ("" when
    none) for another user's listener, or (with a `command` to start) for any listener at
    all; a note to say ("" when none) for the user's own listener in attach mode."""
    snapshot = list(found)
    foreign = squatters(ports, uid, snapshot)
    if foreign:
        return _foreign_line(foreign), ""
    own = own_listeners(ports, uid, snapshot)
    if not own:
        return "", ""
    if command:
        return (f"already in use on this machine: {_own_shown(own)}; the cluster's requests "
                f"would go to it, not to your command; {ADVICE}"), ""
    return "", (f"already listening on this machine: {_own_shown(own)}; the cluster's "
                "requests go to it")


def tree_hosts(ports: Sequence[int], pids: Collection[int],
               found: Iterable[Listener]) -> dict[int, str]:
    """For each port of `ports` on which a process of `pids` (the command's tree) listens,
    the address to send the cluster's requests to: 127.0.0.1 when the listener takes IPv4
    loopback connections, ::1 when it takes only IPv6 ones, else the one address it listens
    on."""
    by_port: dict[int, list[str]] = {}
    for item in found:
        if item.port in ports and item.pid is not None and item.pid in pids:
            by_port.setdefault(item.port, []).append(item.address)
    out: dict[int, str] = {}
    for port, addresses in by_port.items():
        if any(a in IPV4_REACHING_LOOPBACK for a in addresses):
            out[port] = "127.0.0.1"
        elif any(a in IPV6_REACHING_LOOPBACK for a in addresses):
            out[port] = "::1"
        else:
            out[port] = sorted(addresses)[0]
    return out


def strangers(ports: Sequence[int], pids: Collection[int],
              found: Iterable[Listener]) -> dict[int, Listener]:
    """The ports on which something not of `pids` listens at an address reachable at
    loopback (with the command's listener there too, the forward chooses the command's)."""
    wanted = set(ports)
    out: dict[int, Listener] = {}
    for item in found:
        if item.port in wanted and item.address in LOOPBACK_OR_ANY and item.pid not in pids:
            out.setdefault(item.port, item)
    return out


def reaching(host: str) -> set[str]:
    """The listening addresses that take connections made to `host`."""
    if host == "127.0.0.1":
        return IPV4_REACHING_LOOPBACK | {"::"}  # `::` takes IPv4 too unless IPV6_V6ONLY
    if host == "::1":
        return IPV6_REACHING_LOOPBACK
    return {host, "0.0.0.0", "", "::"}


def foreign_on(hosts: dict[int, str], uid: int,
               found: Iterable[Listener]) -> dict[int, Listener]:
    """The ports whose forward address (`hosts`: port -> the address connections go to) is
    now also listened on by a process that is not `uid`'s (it could take connections meant for
    the command, e.g. after the command closed its socket)."""
    out: dict[int, Listener] = {}
    for item in found:
        host = hosts.get(item.port)
        if host is not None and item.address in reaching(host) and item.uid != uid:
            out.setdefault(item.port, item)
    return out


def watch_problem(hosts: dict[int, str]) -> str:
    """One line when another user listens where the command's traffic goes ("" when none, and
    off Linux)."""
    if not hosts or not inspectable() or not listening_now(hosts, not_uid=os.getuid()):
        return ""
    taken = foreign_on(hosts, os.getuid(), listeners())
    return (_foreign_line(taken).replace("would go to them", "may go to them") +
            "; ending the session") if taken else ""


@dataclass(frozen=True)
class TcpRow:
    """One socket of the kernel's TCP table (a row of /proc/net/tcp or tcp6)."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: int
    uid: int  # the socket owner's (for a connection not yet accepted: the listener's)


@dataclass(frozen=True)
class PeerVerdict:
    """Whether a forwarded connection may carry the cluster's bytes: `ok`, or why not
    (`line`), and whether that is another user's listener (`foreign`: the session ends)."""

    ok: bool
    foreign: bool = False
    line: str = ""


@functools.lru_cache(maxsize=256)  # the same few loopback addresses, once per connection
def _address(host: str) -> str:
    """`host` as the table names it: IPv4-mapped IPv6 as IPv4, IPv6 compressed."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _endpoint(address: tuple[str, int]) -> str:
    host = _address(address[0])
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


def peer_verdict(rows: Iterable[TcpRow], ours: tuple[str, int], peer: tuple[str, int],
                 uid: int) -> PeerVerdict:
    """Whether the connection from `ours` to `peer` (both as our socket names them) reached
    a socket of `uid`: the socket at the other end is the row whose local address is `peer`
    and whose remote address is `ours` (TIME_WAIT rows belong to nobody, so they do not
    count). Another user's socket there is `foreign`; none found is not proven either (the
    connection was already closed by the other end): neither gets a byte."""
    me, them = (_address(ours[0]), ours[1]), (_address(peer[0]), peer[1])
    owners = {row.uid for row in rows
              if row.state not in (TCP_TIME_WAIT, TCP_LISTEN)
              and (_address(row.local[0]), row.local[1]) == them
              and (_address(row.remote[0]), row.remote[1]) == me}
    where_to = _endpoint(peer)
    if not owners:
        return PeerVerdict(False, False, f"the connection to {where_to} was closed by the other "
                           "end before its owner could be told; closed it, nothing was sent")
    others = sorted(owners - {uid})
    if others:
        return PeerVerdict(False, True, (
            f"another user (uid {others[0]}) took a connection to {where_to} meant for your "
            "service (it listens there now): closed it before any of the cluster's bytes were "
            "sent; ending the session"))
    return PeerVerdict(True)


def parse_tcp_table(text: str, remote_port: int | None = None) -> list[TcpRow]:
    """The rows of /proc/net/tcp or /proc/net/tcp6 (`text`); with `remote_port`, only those
    whose remote port is that (the cheap filter one lookup needs). Addresses are printed as
    32-bit words in the host's byte order."""
    rows: list[TcpRow] = []
    wanted = None if remote_port is None else f":{remote_port:04X}"
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or (wanted is not None and not fields[2].endswith(wanted)):
            continue
        try:
            local, remote = _proc_endpoint(fields[1]), _proc_endpoint(fields[2])
            rows.append(TcpRow(local, remote, int(fields[3], 16), int(fields[7])))
        except ValueError:
            continue
    return rows


def _proc_endpoint(field: str) -> tuple[str, int]:
    host, _, port = field.partition(":")
    if len(host) not in (8, 32):
        raise ValueError(field)
    raw = b"".join(struct.pack("=I", int(host[i:i + 8], 16)) for i in range(0, len(host), 8))
    return _address(str(ipaddress.ip_address(raw))), int(port, 16)


SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
NETLINK_SOCK_DIAG = 4
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
TCP_SYN_RECV = 3
_NLMSGHDR = struct.Struct("=IHHII")


def diag_request(ours: tuple[str, int], peer: tuple[str, int], seq: int = 1) -> bytes:
    """A sock_diag request (linux/inet_diag.h) for the one TCP socket whose local address is
    `peer` and whose remote address is `ours`: the kernel looks it up by its addresses, as it
    does for a packet (a dual-stack listener's socket is found by its IPv4 addresses too)."""
    me, them = _address(ours[0]), _address(peer[0])
    family = socket.AF_INET6 if ":" in them else socket.AF_INET
    sockid = (struct.pack("!HH", peer[1], ours[1])
              + socket.inet_pton(family, them).ljust(16, b"\0")
              + socket.inet_pton(family, me).ljust(16, b"\0")
              + struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq,
                          0) + body


def parse_diag_reply(data: bytes) -> list[TcpRow]:
    """The socket of a sock_diag reply (none: the kernel has no such socket). ValueError for a
    reply that is neither (another error, or cut short)."""
    if len(data) < _NLMSGHDR.size + 4:
        raise ValueError("short sock_diag reply")
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(data)
    if kind == NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", data, _NLMSGHDR.size)
        if error == -errno.ENOENT:
            return []
        raise ValueError(f"sock_diag error {error}")
    if kind != SOCK_DIAG_BY_FAMILY or len(data) < _NLMSGHDR.size + 72:
        raise ValueError(f"unexpected sock_diag reply type {kind}")
    at = _NLMSGHDR.size
    family, state = data[at], data[at + 1]
    sport, dport = struct.unpack_from("!HH", data, at + 4)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"sock_diag reply of address family {family}")
    size = 4 if family == socket.AF_INET else 16
    src = socket.inet_ntop(family, data[at + 8:at + 8 + size])
    dst = socket.inet_ntop(family, data[at + 24:at + 24 + size])
    (uid,) = struct.unpack_from("=I", data, at + 64)
    return [TcpRow((_address(src), sport), (_address(dst), dport), state, uid)]


def diag_rows(ours: tuple[str, int], peer: tuple[str, int]) -> list[TcpRow]:
    """The socket at the other end of our connection (`ours` -> `peer`), as sock_diag tells
    it: one lookup by its addresses, whatever the size of the table. OSError when sock_diag
    cannot be asked, ValueError for a reply that cannot be read."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(diag_request(ours, peer))
        return parse_diag_reply(nl.recv(8192))


def table_rows(ours: tuple[str, int], peer: tuple[str, int]) -> list[TcpRow]:
    """The rows of /proc/net/tcp and tcp6 whose remote port is ours (a dual-stack listener's
    sockets, IPv4 connections included, are in tcp6). Read whole: a cost in the size of the
    table (milliseconds for a thousand sockets), hence only when sock_diag cannot tell."""
    tables = ["/proc/net/tcp6"] if ":" in _address(peer[0]) \
        else ["/proc/net/tcp", "/proc/net/tcp6"]
    rows: list[TcpRow] = []
    for table in tables:
        try:
            with open(table) as f:
                rows += parse_tcp_table(f.read(), remote_port=ours[1])
        except OSError:
            continue
    return rows


def accepting_socket(ours: tuple[str, int], peer: tuple[str, int]) -> PeerVerdict:
    """`peer_verdict` for our connected socket (`ours` -> `peer`) on this machine now (Linux).

    sock_diag (`diag_rows`) gives no owner for a connection the kernel has not made a socket of
    yet (SYN_RECV: a listener with TCP_DEFER_ACCEPT, or for an instant after connect: it says
    uid 0), and may be unavailable: then the TCP table (`table_rows`) is read, which names the
    listener's owner for such a connection."""
    uid = os.getuid()
    try:
        found = diag_rows(ours, peer)
        if not any(row.state == TCP_SYN_RECV for row in found):
            return peer_verdict(found, ours, peer, uid)
    except (OSError, ValueError):
        pass
    return peer_verdict(table_rows(ours, peer), ours, peer, uid)


def listening(rows: Iterable[TcpRow], ports: Collection[int], *,
              not_uid: int | None = None) -> list[TcpRow]:
    """The listening sockets of `rows` on one of `ports` (with `not_uid`: whose owner is not
    that uid)."""
    return [row for row in rows if row.state == TCP_LISTEN and row.local[1] in ports
            and (not_uid is None or row.uid != not_uid)]


def parse_listening(text: str, ports: Collection[int]) -> list[TcpRow]:
    """The rows of /proc/net/tcp or tcp6 (`text`) that listen on one of `ports`, found by one
    search of the text (a machine has thousands of connections and a few listeners: parsing
    every row costs milliseconds)."""
    if not ports:
        return []
    wanted = "|".join(f"{port:04X}" for port in sorted(set(ports)))
    found = re.finditer(rf"^.*:(?:{wanted}) (?:0{{8}}|0{{32}}):0000 {TCP_LISTEN:02X} .*$", text,
                        re.MULTILINE)
    return parse_tcp_table("\n".join(["header", *(m.group(0) for m in found)]))


NLM_F_DUMP = 0x300
NLMSG_DONE = 3


def diag_dump_request(family: int, states: int, seq: int = 1) -> bytes:
    """A sock_diag request for every TCP socket of `family` in one of `states` (a bit mask of
    TCP states): the kernel walks only those (for listeners, its small listening table)."""
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, states) + bytes(48)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_diag_dump(data: bytes) -> tuple[list[TcpRow], bool]:
    """The sockets of one read of a sock_diag dump's answer, and whether it was the last
    (NLMSG_DONE). ValueError for an error or a message cut short."""
    rows: list[TcpRow] = []
    at = 0
    while at + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, at)
        if length < _NLMSGHDR.size or at + length > len(data):
            raise ValueError("sock_diag message cut short")
        if kind == NLMSG_DONE:
            return rows, True
        rows += parse_diag_reply(data[at:at + length])
        at += (length + 3) & ~3
    return rows, False


def diag_listening() -> list[TcpRow]:
    """Every listening TCP socket of this network namespace, from sock_diag. OSError when it
    cannot be asked, ValueError for an answer that cannot be read."""
    rows: list[TcpRow] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(diag_dump_request(family, 1 << TCP_LISTEN))
            done = False
            while not done:
                found, done = parse_diag_dump(nl.recv(65536))
                rows += found
    return rows


def listening_now(ports: Collection[int], *, not_uid: int | None = None) -> bool:
    """Whether anything listens on one of `ports` now (of another owner than `not_uid`), as
    the kernel tells it (sock_diag; its TCP tables where that cannot be asked): the cheap look
    before `listeners`, whose walk of every process's file descriptors costs tens of
    milliseconds. True when neither can be read (then the caller looks properly)."""
    try:
        return bool(listening(diag_listening(), ports, not_uid=not_uid))
    except (OSError, ValueError):
        pass
    rows: list[TcpRow] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows += parse_listening(f.read(), ports)
        except OSError:
            return True
    return bool(listening(rows, ports, not_uid=not_uid))


def inspectable() -> bool:
    """Whether listeners and their owners can be told here (Linux)."""
    return os.uname().sysname == "Linux"


def listeners() -> list[Listener]:
    """The machine's listening TCP sockets with their owners, as far as we may see them."""
    found: list[Listener] = []
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return found
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr:
            continue
        uid, name = None, ""
        if c.pid is not None:
            try:
                proc = psutil.Process(c.pid)
                uid = proc.uids().real
                name = proc.name()
            except psutil.Error:
                uid = None
        found.append(Listener(str(c.laddr.ip), int(c.laddr.port), c.pid, uid, name))
    return found


def tree_of(pid: int) -> set[int]:
    """`pid`, its descendants, and the processes still in the session it leads (the command
    runs in a session of its own: a daemonized server re-parented away stays in it)."""
    return _processes_of(pid, None)


def command_pids(root: int, since: float) -> set[int]:
    """The processes whose listener counts as the command's: its tree (`tree_of`), and every
    process of this user created since the command started (`since`, wall clock): a daemon the
    command started the classic way (double fork, a session of its own) is in neither its tree
    nor its session. Another user's process never counts; the user's own from before the
    command was refused before the swap."""
    return _processes_of(root, since)


def _processes_of(root: int, since: float | None) -> set[int]:
    """`tree_of(root)`, and with `since` this user's processes created since then, in one walk
    of the process table (the hand-over asks this every tenth of a second)."""
    found = {root}
    try:
        found |= {child.pid for child in psutil.Process(root).children(recursive=True)}
    except psutil.Error:
        pass
    uid = os.getuid()
    for proc in psutil.process_iter(["uids", "create_time"] if since is not None else None):
        if since is not None:
            uids, created = proc.info.get("uids"), proc.info.get("create_time")
            if uids is not None and uids.real == uid and created is not None \
                    and created >= since:
                found.add(proc.pid)
                continue
        try:
            if os.getsid(proc.pid) == root:
                found.add(proc.pid)
        except OSError:
            continue
    return found


def problem(ports: Sequence[int]) -> str:
    """One line naming the forwarded ports another user listens on ("" when none; always ""
    off Linux, where the owner cannot be told)."""
    if not ports or not inspectable() or not listening_now(ports, not_uid=os.getuid()):
        return ""
    taken = squatters(ports, os.getuid(), listeners())
    return _foreign_line(taken) if taken else ""


def check_before_swap(ports: Sequence[int], *, command: bool) -> tuple[str, str]:
    """`before_swap` on this machine's listeners now (("", "") off Linux)."""
    if not ports or not inspectable():
        return "", ""
    return before_swap(ports, os.getuid(), listeners(), command=command)
