"""The sidecar as a subprocess, driven by the stock OpenSSH client (/usr/bin/ssh)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import protocol
from tests.sidecar.harness import (
    SSH,
    ClientKey,
    Sidecar,
    TagServer,
    exchange,
    free_ports,
    make_key,
    non_loopback_addresses,
    popen,
    running_sidecar,
)

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not os.path.exists(SSH), reason="needs the OpenSSH client"),
]

FORWARD_OPTS = ("-N", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=5")


@pytest.fixture
def sidecar(tmp_path: Path, key: ClientKey) -> Iterator[Sidecar]:
    with running_sidecar(tmp_path, key, extra_env={"SERVICE_URL": "http://db:5432"}) as sc:
        yield sc


def test_env_over_openssh_with_a_pinned_host_key(sidecar: Sidecar, key: ClientKey) -> None:
    result = sidecar.ssh(key, protocol.CMD_ENV)
    assert result.returncode == 0, result.stderr
    expected = {k: v for k, v in sidecar.env.items() if not k.startswith("BRIDGE_")}
    assert json.loads(result.stdout) == expected
    assert "SERVICE_URL" in expected


def test_openssh_negotiates_aes_gcm(sidecar: Sidecar, key: ClientKey) -> None:
    result = sidecar.ssh(key, protocol.CMD_VERSION, opts=("-v",))
    assert result.returncode == 0, result.stderr
    assert "client->server cipher: aes128-gcm@openssh.com" in result.stderr


def test_wrong_host_key_is_detected_by_strict_checking(
    sidecar: Sidecar, key: ClientKey, tmp_path: Path
) -> None:
    # Pinning works: a known_hosts entry with another key makes ssh refuse the server.
    other = make_key(tmp_path, "not_the_host").public_line
    sidecar.known_hosts.write_text(f"[127.0.0.1]:{sidecar.ssh_port} {other}\n")
    result = sidecar.ssh(key, protocol.CMD_VERSION)
    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_wrong_key_is_denied(sidecar: Sidecar, tmp_path: Path) -> None:
    intruder = make_key(tmp_path, "id_intruder")
    result = sidecar.ssh(intruder, protocol.CMD_VERSION)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr
    assert result.stdout == ""


def test_shell_pty_x11_and_other_commands_are_refused(sidecar: Sidecar, key: ClientKey) -> None:
    shell = sidecar.ssh(key)
    assert shell.returncode == 1
    assert "bridge sidecar: an interactive shell is not available" in shell.stderr

    other = sidecar.ssh(key, "id", "-u")
    assert other.returncode == 127
    assert "unknown command 'id -u'" in other.stderr and other.stdout == ""

    pty = sidecar.ssh(key, protocol.CMD_VERSION, opts=("-tt",))
    assert "PTY allocation request failed" in pty.stderr

    x11 = sidecar.ssh(
        key, protocol.CMD_VERSION, opts=("-X", "-o", "XAuthLocation=/nonexistent"),
        env={"DISPLAY": ":0"},
    )
    assert "X11 forwarding request failed" in x11.stderr

    sftp = sidecar.ssh(key, "sftp", opts=("-s",))
    assert sftp.returncode == 1
    assert "the 'sftp' subsystem is not available" in sftp.stderr


def test_remote_forward_carries_traffic_both_ways_on_all_interfaces(
    sidecar: Sidecar, key: ClientKey
) -> None:
    port = sidecar.allowed[0]

    async def scenario() -> dict[str, bytes]:
        answers: dict[str, bytes] = {}
        async with TagServer(b"laptop") as laptop:
            argv = sidecar.ssh_argv(
                key, *FORWARD_OPTS, "-R", f"{port}:127.0.0.1:{laptop.port}",
                "developer@127.0.0.1",
            )
            with popen(argv) as ssh:
                await asyncio.to_thread(sidecar.wait_ready, 200)
                addresses = ["127.0.0.1", *(["::1"] if socket.has_ipv6 else [])]
                for address in addresses + non_loopback_addresses():
                    answers[address] = await exchange(address, port, b"ping " + address.encode())
                answers["big"] = await exchange("127.0.0.1", port, b"z" * (2 * 1024 * 1024))
                assert ssh.poll() is None
        return answers

    answers = asyncio.run(scenario())
    big = answers.pop("big")
    assert big == b"laptop:" + b"z" * (2 * 1024 * 1024)
    for address, answer in answers.items():
        assert answer == b"laptop:ping " + address.encode()
    # OpenSSH names no bind address -> asks for "localhost"; the sidecar binds everything anyway
    assert f"remote forward port {port} bound on all interfaces (asked for localhost)" in (
        sidecar.log()
    )


def test_disallowed_port_makes_openssh_fail(sidecar: Sidecar, key: ClientKey) -> None:
    (other,) = free_ports(1)
    result = sidecar.ssh(key, opts=(*FORWARD_OPTS, "-R", f"{other}:127.0.0.1:9"))
    assert result.returncode == 255
    assert f"remote port forwarding failed for listen port {other}" in result.stderr
    sidecar.wait_log(f"port {other} is not in BRIDGE_PORTS")


def test_second_openssh_client_cannot_steal_a_port_until_the_holder_leaves(
    sidecar: Sidecar, key: ClientKey
) -> None:
    port = sidecar.allowed[0]

    async def scenario() -> tuple[int, str, bytes]:
        async with TagServer(b"first") as first, TagServer(b"second") as second:
            holder_argv = sidecar.ssh_argv(
                key, *FORWARD_OPTS, "-R", f"{port}:127.0.0.1:{first.port}", "developer@127.0.0.1"
            )
            with popen(holder_argv) as holder:
                await asyncio.to_thread(sidecar.wait_ready, 200)
                assert await exchange("127.0.0.1", port, b"a") == b"first:a"
                thief = await asyncio.to_thread(
                    sidecar.ssh, key, opts=(*FORWARD_OPTS, "-R", f"{port}:127.0.0.1:{second.port}")
                )
                holder.terminate()
                holder.wait(timeout=10)
            await asyncio.to_thread(sidecar.wait_ready, 503)
            taker_argv = sidecar.ssh_argv(
                key, *FORWARD_OPTS, "-R", f"{port}:127.0.0.1:{second.port}", "developer@127.0.0.1"
            )
            with popen(taker_argv) as taker:
                await asyncio.to_thread(sidecar.wait_ready, 200)
                after = await exchange("127.0.0.1", port, b"b")
                assert taker.poll() is None
            return thief.returncode, thief.stderr, after

    thief_rc, thief_err, after = asyncio.run(scenario())
    assert thief_rc == 255
    assert f"remote port forwarding failed for listen port {port}" in thief_err
    assert after == b"second:b"
    assert f"port {port} is held by another connected client" in sidecar.log()


def test_direct_tcpip_with_openssh_stdio_forward(sidecar: Sidecar, key: ClientKey) -> None:
    async def scenario() -> tuple[int, str, str]:
        async with TagServer(b"svc") as service:
            proc = await asyncio.create_subprocess_exec(
                *sidecar.ssh_argv(key, "-W", f"localhost:{service.port}", "developer@127.0.0.1"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(b"through -W"), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            return proc.returncode or 0, out.decode(), err.decode()

    rc, out, err = asyncio.run(scenario())
    assert (rc, out) == (0, "svc:through -W"), err


def test_a_vanished_holder_is_dropped_by_keepalive_and_its_port_freed(
    tmp_path: Path, key: ClientKey
) -> None:
    """A client that stops answering (SIGSTOP: its kernel still ACKs, SSH is silent) is
    dropped after the keepalives go unanswered, so a reconnecting client gets the port."""
    env = {protocol.ENV_KEEPALIVE_SECONDS: "0.5"}
    with running_sidecar(tmp_path, key, extra_env=env) as sidecar:
        port = sidecar.allowed[0]
        argv = sidecar.ssh_argv(
            key, *FORWARD_OPTS, "-R", f"{port}:127.0.0.1:9", "developer@127.0.0.1"
        )
        with popen(argv) as frozen:
            sidecar.wait_ready(200)
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                sidecar.wait_ready(503, timeout=30)
                taker = sidecar.ssh(
                    key,
                    protocol.CMD_VERSION,
                    opts=("-o", "ExitOnForwardFailure=yes", "-R", f"{port}:127.0.0.1:9"),
                )
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
        assert taker.returncode == 0, taker.stderr
        assert json.loads(taker.stdout)["protocol"] == protocol.PROTOCOL_VERSION
        log = sidecar.log()
        assert f"remote forward port {port} released" in log
        assert "conn 2" in log and log.count(f"remote forward port {port} bound") == 2
