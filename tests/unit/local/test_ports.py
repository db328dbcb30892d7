"""Local port squatting (issue 13, item 7): a listener of another user on a forwarded port is
found, one of our own is not."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys

import psutil
import pytest

from bridge.local import ports as localports
from bridge.local.ports import Listener

LISTEN = ("import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); "
          "s.listen(); print('up', flush=True); sys.stdin.read()")


def test_squatters_pure() -> None:
    found = [Listener("127.0.0.1", 8080, 10, 1000), Listener("0.0.0.0", 9090, None, None),
             Listener("10.0.0.5", 7070, None, None), Listener("::", 6060, 11, 0),
             Listener("127.0.0.1", 5050, 12, 0)]
    taken = localports.squatters([8080, 9090, 7070, 6060, 5050, 4040], 0, found)
    assert set(taken) == {8080, 9090}  # not 7070 (another address), not ours (6060, 5050)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a listener as another user")
def test_a_listener_of_another_user_is_named_and_ours_is_not() -> None:
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/python3", "-c", LISTEN, str(port)], user=65534,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        why = localports.problem([port])
        assert f"127.0.0.1:{port}" in why and "uid 65534" in why and "\n" not in why
    finally:
        proc.kill()
        proc.wait(timeout=10)
    own = subprocess.Popen([sys.executable, "-c", LISTEN, str(port)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert own.stdout is not None and own.stdout.readline().strip() == "up"
        assert localports.problem([port]) == ""
    finally:
        own.kill()
        own.wait(timeout=10)


def test_before_the_swap_a_listener_on_the_port_is_refused_or_said() -> None:
    """Issue 21.2: the user's own stray server on the port got the cluster's traffic while the
    command failed to bind. Another user's listener: refused in both modes; the user's own:
    refused when a command will be started, said in attach mode; its pid and name given."""
    stray = Listener("0.0.0.0", 8080, 4242, 1000, "python3")
    refusal, note = localports.before_swap([8080], 1000, [stray], command=True)
    assert refusal == ("already in use on this machine: 0.0.0.0:8080 (pid 4242, python3); the "
                       "cluster's requests would go to it, not to your command; stop it or pick "
                       "another local port with --port REMOTE:LOCAL") and note == ""
    refusal, note = localports.before_swap([8080], 1000, [stray], command=False)
    assert refusal == "" and "pid 4242, python3" in note and "go to it" in note
    theirs = Listener("127.0.0.1", 8080, None, None)
    for command in (True, False):
        refusal, _ = localports.before_swap([8080], 1000, [theirs, stray], command=command)
        assert refusal.startswith("another user listens on 127.0.0.1:8080")
    elsewhere = Listener("10.0.0.5", 8080, 4242, 1000, "python3")  # not reachable at loopback
    assert localports.before_swap([8080], 1000, [elsewhere], command=True) == ("", "")
    assert localports.before_swap([9090], 1000, [stray], command=True) == ("", "")


def test_the_forward_goes_to_the_address_family_the_command_listens_on() -> None:
    """Issue 19.6: another user on 127.0.0.1:P got every request while the command listened on
    [::1]:P. Only the command's tree's listeners count; IPv6-only goes to ::1."""
    squatter = Listener("127.0.0.1", 8080, None, None)
    v6 = Listener("::1", 8080, 10, 1000)
    assert localports.tree_hosts([8080], {10}, [squatter, v6]) == {8080: "::1"}
    assert localports.tree_hosts([8080], {10}, [Listener("::", 8080, 10, 1000)]) == {8080: "::1"}
    assert localports.tree_hosts([8080], {10}, [Listener("0.0.0.0", 8080, 10, 1000), v6]) == \
        {8080: "127.0.0.1"}
    assert localports.tree_hosts([8080], {10}, [Listener("10.1.2.3", 8080, 10, 1000)]) == \
        {8080: "10.1.2.3"}
    assert localports.tree_hosts([8080], {11}, [squatter, v6]) == {}  # not the command's
    assert localports.strangers([8080], {10}, [squatter, v6]) == {8080: squatter}


def test_a_stray_server_of_our_own_is_named_by_pid_and_name() -> None:
    port = free_port()
    own = subprocess.Popen([sys.executable, "-c", LISTEN, str(port)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert own.stdout is not None and own.stdout.readline().strip() == "up"
        refusal, _ = localports.check_before_swap([port], command=True)
        assert f"127.0.0.1:{port} (pid {own.pid}, python" in refusal, refusal
        _, note = localports.check_before_swap([port], command=False)
        assert f"pid {own.pid}" in note
    finally:
        own.kill()
        own.wait(timeout=10)
    assert localports.check_before_swap([port], command=True) == ("", "")


def test_the_tree_of_a_command_holds_its_children_and_its_session() -> None:
    """A server the command started (a child, or one daemonized away but still in the
    command's session) is the command's; this test process is not."""
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(p.pid, flush=True); time.sleep(60)\n")
    cmd = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        assert cmd.stdout is not None
        grandchild = int(cmd.stdout.readline())
        tree = localports.tree_of(cmd.pid)
        assert {cmd.pid, grandchild} <= tree and os.getpid() not in tree
    finally:
        os.killpg(cmd.pid, 9)
        cmd.wait(timeout=10)


def test_a_daemon_the_command_started_counts_as_the_commands() -> None:
    """A process of this user created since the command started counts (a daemon made the
    classic way is outside the command's tree and session); one from before does not."""
    import time

    before = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(1.5)  # create_time counts from a boot time in whole seconds
    after = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        since = psutil.Process(after.pid).create_time()  # on the same scale
        pids = localports.command_pids(999999999, since)
        assert after.pid in pids and before.pid not in pids
    finally:
        for p in (before, after):
            p.kill()
            p.wait(timeout=10)


def test_while_the_session_lasts_only_a_foreign_listener_where_the_traffic_goes_counts() -> None:
    """The command listens on [::1]:8080: another user on 127.0.0.1:8080 gets nothing (not a
    reason to end); another user on [::1]:8080 or `::` (after the command closed its socket)
    is."""
    mine = Listener("::1", 8080, 10, 1000)
    v4_squatter = Listener("127.0.0.1", 8080, None, None)
    assert localports.foreign_on({8080: "::1"}, 1000, [mine, v4_squatter]) == {}
    for address in ("::1", "::"):
        squatter = Listener(address, 8080, None, None)
        assert localports.foreign_on({8080: "::1"}, 1000, [squatter]) == {8080: squatter}
    assert localports.foreign_on({8080: "127.0.0.1"}, 1000, [v4_squatter]) == \
        {8080: v4_squatter}
    assert localports.foreign_on({9090: "127.0.0.1"}, 1000, [v4_squatter]) == {}


# -- each forwarded connection proven (issue 19 item 6: the window between two polls) -------

TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 11 1
   1: 0100007F:1F90 0100007F:9FAC 01 00000000:00000000 00:00000000 00000000 65534        0 12 1
   2: 0100007F:9FAC 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 13 1
   3: 0100007F:1F90 0100007F:A000 06 00000000:00000000 03:0000070A 00000000     0        0 0 3
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:9FAD 01 00000000:00000000 00:00000000 00000000  1000        0 14 1
   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:9FAE 03 00000000:00000000 00:00000000 00000000  1000        0 0 1
"""  # noqa: E501


@pytest.mark.skipif(sys.byteorder != "little", reason="the samples were printed on x86")
def test_the_kernels_tcp_table_is_read_with_owner_state_and_addresses() -> None:
    rows = localports.parse_tcp_table(TCP4)
    assert rows[1] == localports.TcpRow(("127.0.0.1", 8080), ("127.0.0.1", 40876), 1, 65534)
    assert rows[0].state == localports.TCP_LISTEN and rows[3].uid == 0
    v6 = localports.parse_tcp_table(TCP6)
    assert v6[0].local == ("127.0.0.1", 8080)  # a dual-stack listener's IPv4 connection
    assert v6[1].local == ("::1", 8080) and v6[1].state == 3  # not yet accepted
    assert [r.remote[1] for r in localports.parse_tcp_table(TCP4, remote_port=40876)] == \
        [40876]
    assert localports.parse_tcp_table("header\ngarbage line\n 0: zz:1 yy:2 01 a b c 5\n") == []


def test_a_connection_is_proven_by_the_owner_of_the_socket_at_its_other_end() -> None:
    """The socket that accepted our connection is the row whose local address is our peer and
    whose remote address is us; only its owner counts (not the listener's row, not ours)."""
    row = localports.TcpRow
    ours, peer = ("127.0.0.1", 40876), ("127.0.0.1", 8080)
    mine = [row(peer, ("0.0.0.0", 0), localports.TCP_LISTEN, 0),  # a listener: not the peer
            row(ours, peer, 1, 1000),  # our own socket
            row(peer, ours, 1, 1000)]
    assert localports.peer_verdict(mine, ours, peer, 1000) == localports.PeerVerdict(True)
    theirs = [row(ours, peer, 1, 1000), row(peer, ours, 1, 65534)]
    verdict = localports.peer_verdict(theirs, ours, peer, 1000)
    assert not verdict.ok and verdict.foreign
    assert verdict.line == (
        "another user (uid 65534) took a connection to 127.0.0.1:8080 meant for your service "
        "(it listens there now): closed it before any of the cluster's bytes were sent; "
        "ending the session")
    assert localports.peer_verdict(theirs, ours, peer, 65534).ok  # unless that is us
    # a dual-stack listener's socket names the addresses IPv4-mapped; not accepted yet: the
    # listener's owner
    mapped = [row(("::ffff:127.0.0.1", 8080), ("::ffff:127.0.0.1", 40876), 3, 65534)]
    assert localports.peer_verdict(mapped, ours, peer, 1000).foreign
    v6 = localports.peer_verdict([row(("::1", 8080), ("::1", 40876), 1, 0)],
                                 ("::1", 40876), ("::1", 8080), 1000)
    assert v6.foreign and "[::1]:8080" in v6.line and "uid 0" in v6.line
    # nothing there but a TIME_WAIT (owned by nobody) or another connection: not proven,
    # not another user's either
    gone = localports.peer_verdict([row(peer, ours, localports.TCP_TIME_WAIT, 0),
                                    row(peer, ("127.0.0.1", 1), 1, 65534)], ours, peer, 1000)
    assert not gone.ok and not gone.foreign and "nothing was sent" in gone.line


def test_the_sock_diag_request_names_the_socket_at_the_other_end() -> None:
    request = localports.diag_request(("127.0.0.1", 40876), ("127.0.0.1", 8080), seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (len(request), 20, 1, 7) and len(request) == 72
    assert request[16:18] == bytes([socket.AF_INET, socket.IPPROTO_TCP])
    assert struct.unpack_from("!HH", request, 24) == (8080, 40876)  # its sport: the peer
    assert request[28:32] == bytes([127, 0, 0, 1]) and request[44:48] == bytes([127, 0, 0, 1])
    v6 = localports.diag_request(("::1", 40876), ("::1", 8080))
    assert v6[16] == socket.AF_INET6 and v6[28:44] == socket.inet_pton(socket.AF_INET6, "::1")


def diag_reply(family: int, state: int, src: str, sport: int, dst: str, dport: int,
               uid: int) -> bytes:
    def pack(address: str) -> bytes:
        return socket.inet_pton(family, address).ljust(16, b"\0")

    msg = (bytes([family, state, 0, 0]) + struct.pack("!HH", sport, dport) + pack(src)
           + pack(dst) + struct.pack("=III", 0, 0, 0) + struct.pack("=IIIII", 0, 0, 0, uid, 9))
    return struct.pack("=IHHII", 16 + len(msg), 20, 2, 1, 0) + msg


def test_a_sock_diag_reply_is_read_as_one_row_or_none() -> None:
    row = localports.parse_diag_reply(
        diag_reply(socket.AF_INET6, 1, "::ffff:127.0.0.1", 8080, "::ffff:127.0.0.1", 40876,
                   65534))
    assert row == [localports.TcpRow(("127.0.0.1", 8080), ("127.0.0.1", 40876), 1, 65534)]
    assert localports.parse_diag_reply(
        diag_reply(socket.AF_INET, 1, "127.0.0.1", 8080, "127.0.0.1", 1, 5))[0].uid == 5
    no_such = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -errno.ENOENT) + \
        bytes(16)
    assert localports.parse_diag_reply(no_such) == []
    for bad in (b"", struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + bytes(16),
                struct.pack("=IHHII", 20, 3, 0, 1, 0) + bytes(4)):
        with pytest.raises(ValueError):
            localports.parse_diag_reply(bad)


@pytest.mark.parametrize("family,listen,connect", [
    (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
    (socket.AF_INET6, "::", "127.0.0.1"),  # dual stack: the peer is in tcp6
    (socket.AF_INET6, "::1", "::1"),
])
@pytest.mark.skipif(not localports.inspectable(), reason="Linux only")
def test_our_own_listener_is_proven_on_this_machine(family: int, listen: str,
                                                    connect: str) -> None:
    """Both sources (sock_diag, the TCP table) find the socket that accepted the connection,
    before and after it is accepted; it is ours."""
    uid = os.getuid()
    with socket.socket(family) as server:
        server.bind((listen, 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection((connect, port)) as client:
            ours, peer = client.getsockname()[:2], client.getpeername()[:2]
            for accept in (False, True):
                accepted = server.accept()[0] if accept else None
                assert localports.accepting_socket(ours, peer).ok
                for rows in (localports.diag_rows(ours, peer),
                             localports.table_rows(ours, peer)):
                    assert localports.peer_verdict(rows, ours, peer, uid).ok, rows
                    assert not localports.peer_verdict(rows, ours, peer, uid + 1).ok
                if accepted is not None:
                    accepted.close()


def test_listeners_are_told_from_the_kernels_listening_table() -> None:
    """`listening_now` (the cheap look before a walk of the process table) sees a listener
    of ours on IPv4 and IPv6, not a closed port, and tells owners apart; the pure parts read
    a sock_diag dump and the TCP table's listening rows only."""
    v4, v6 = socket.socket(), socket.socket(socket.AF_INET6)
    v4.bind(("127.0.0.1", 0))
    v6.bind(("::1", 0))
    for s in (v4, v6):
        s.listen()
    p4, p6 = v4.getsockname()[1], v6.getsockname()[1]
    closed = free_port()
    try:
        assert localports.listening_now([p4]) and localports.listening_now([p6])
        assert not localports.listening_now([closed])
        assert not localports.listening_now([p4, p6], not_uid=os.getuid())  # ours only
        rows = localports.diag_listening()
        assert {(r.local, r.uid) for r in rows if r.local[1] in (p4, p6)} == {
            (("127.0.0.1", p4), os.getuid()), (("::1", p6), os.getuid())}
        # the same answer from /proc/net/tcp{,6}, the fallback
        text = open("/proc/net/tcp").read() + open("/proc/net/tcp6").read().split("\n", 1)[1]
        assert [r.local for r in localports.parse_listening(text, [p4, p6, closed])] in (
            [("127.0.0.1", p4), ("::1", p6)], [("::1", p6), ("127.0.0.1", p4)])
    finally:
        v4.close()
        v6.close()


def test_a_sock_diag_dump_is_read_to_its_end() -> None:
    hdr = struct.Struct("=IHHII")
    body = bytearray(72)
    body[0], body[1] = socket.AF_INET, localports.TCP_LISTEN
    struct.pack_into("!HH", body, 4, 8080, 0)
    body[8:12] = socket.inet_aton("127.0.0.1")
    struct.pack_into("=I", body, 64, 65534)
    msg = hdr.pack(hdr.size + len(body), localports.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + bytes(body)
    done = hdr.pack(hdr.size + 4, localports.NLMSG_DONE, 2, 1, 0) + bytes(4)
    assert localports.parse_diag_dump(msg + msg) == (
        [localports.TcpRow(("127.0.0.1", 8080), ("0.0.0.0", 0), localports.TCP_LISTEN,
                           65534)] * 2, False)
    rows, last = localports.parse_diag_dump(msg + done)
    assert len(rows) == 1 and last
    with pytest.raises(ValueError):
        localports.parse_diag_dump(msg[:-8])  # cut short
    request = localports.diag_dump_request(socket.AF_INET6, 1 << localports.TCP_LISTEN)
    length, kind, flags, _, _ = hdr.unpack_from(request)
    assert (length, kind, flags) == (len(request), localports.SOCK_DIAG_BY_FAMILY,
                                     localports.NLM_F_REQUEST | localports.NLM_F_DUMP)
    assert request[hdr.size] == socket.AF_INET6
    assert struct.unpack_from("=I", request, hdr.size + 4)[0] == 1 << localports.TCP_LISTEN
