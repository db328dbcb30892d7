"""The sidecar as a subprocess, driven by a real asyncssh client (as the agent will)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from sidecar import protocol
from tests.sidecar.harness import (
    ClientKey,
    Sidecar,
    TagServer,
    exchange,
    free_ports,
    make_key,
    non_loopback_addresses,
    running_sidecar,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sidecar(tmp_path: Path, key: ClientKey) -> Iterator[Sidecar]:
    with running_sidecar(tmp_path, key, extra_env={"APP_MODE": "debug", "MULTI": "a=b\nc d"}) as sc:
        yield sc


def test_host_key_line_is_an_ed25519_openssh_public_key(sidecar: Sidecar) -> None:
    key = asyncssh.import_public_key(sidecar.host_key_line)
    assert key.get_algorithm() == "ssh-ed25519"


def test_right_key_runs_version_and_env(sidecar: Sidecar, key: ClientKey) -> None:
    async def scenario() -> tuple[str, str]:
        async with await sidecar.connect(key) as conn:
            version = await conn.run(protocol.CMD_VERSION, check=True)
            env = await conn.run(protocol.CMD_ENV, check=True)
            return str(version.stdout), str(env.stdout)

    version_out, env_out = asyncio.run(scenario())
    assert json.loads(version_out) == {
        "sidecar": protocol.SIDECAR_VERSION,
        "protocol": protocol.PROTOCOL_VERSION,
    }
    expected = {k: v for k, v in sidecar.env.items() if not k.startswith("BRIDGE_")}
    assert json.loads(env_out) == expected
    assert expected["MULTI"] == "a=b\nc d"  # values survive JSON, settings do not
    log = sidecar.log()
    assert "command 'env' ok" in log and "command 'version' ok" in log
    assert key.public_line.split()[1] not in log  # keys are not logged, fingerprints are


def test_env_leaves_out_the_lc_ctype_python_added(tmp_path: Path, key: ClientKey) -> None:
    # With no usable LANG, Python coerces the C locale and sets LC_CTYPE in its own
    # environment (PEP 538); that is not the pod's, so `env` must not report it.
    with running_sidecar(tmp_path, key, extra_env={"LANG": "", "APP": "x"}) as sidecar:

        async def scenario() -> str:
            async with await sidecar.connect(key) as conn:
                return str((await conn.run(protocol.CMD_ENV, check=True)).stdout)

        env = json.loads(asyncio.run(scenario()))
        expected = {k: v for k, v in sidecar.env.items() if not k.startswith("BRIDGE_")}
        assert env == expected
        assert "LC_CTYPE" not in env


def test_user_name_is_not_checked(sidecar: Sidecar, key: ClientKey) -> None:
    async def scenario() -> str:
        async with await sidecar.connect(key, username="root") as conn:
            return str((await conn.run(protocol.CMD_VERSION, check=True)).stdout)

    assert json.loads(asyncio.run(scenario()))["protocol"] == protocol.PROTOCOL_VERSION


def test_wrong_key_is_denied(sidecar: Sidecar, tmp_path: Path) -> None:
    intruder = make_key(tmp_path, "id_intruder")
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(sidecar.connect(intruder))
    sidecar.wait_log("rejected key " + intruder.key.get_fingerprint("sha256"))


def test_password_and_keyboard_interactive_are_not_offered(sidecar: Sidecar) -> None:
    async def scenario() -> None:
        await sidecar.connect(
            ClientKey(asyncssh.generate_private_key("ssh-ed25519"), Path("/dev/null")),
            client_keys=None,
            password="hunter2",
            kbdint_auth=True,
        )

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(scenario())


def test_shell_pty_subsystem_and_other_commands_are_refused(
    sidecar: Sidecar, key: ClientKey
) -> None:
    async def scenario() -> dict[str, object]:
        found: dict[str, object] = {}
        async with await sidecar.connect(key) as conn:
            shell = await conn.run(None, input="")  # a shell request
            found["shell"] = (shell.exit_status, shell.stderr)
            other = await conn.run("cat /etc/passwd")
            found["other"] = (other.exit_status, other.stdout, other.stderr)
            try:
                await conn.run(protocol.CMD_ENV, term_type="xterm")
                found["pty"] = "allowed"
            except asyncssh.ChannelOpenError as exc:
                found["pty"] = exc.reason
            try:
                async with conn.start_sftp_client():
                    found["sftp"] = "allowed"
            except (asyncssh.Error, OSError) as exc:
                found["sftp"] = str(exc)
            # the connection still works afterwards
            found["after"] = (await conn.run(protocol.CMD_VERSION, check=True)).exit_status
        return found

    found = asyncio.run(scenario())
    status, stderr = found["shell"]  # type: ignore[misc]
    assert status == 1 and "interactive shell is not available" in stderr
    assert "env, version" in stderr
    status, stdout, stderr = found["other"]  # type: ignore[misc]
    assert status == 127 and stdout == ""
    assert "unknown command 'cat /etc/passwd'" in stderr
    assert found["pty"] != "allowed"
    assert found["sftp"] != "allowed"
    assert found["after"] == 0
    log = sidecar.wait_log("subsystem 'sftp' refused")
    assert "pty refused" in log and "shell refused" in log
    assert "command 'cat /etc/passwd' refused" in log


def test_agent_forwarding_and_unix_socket_forwards_are_refused(
    tmp_path: Path, key: ClientKey
) -> None:
    # asyncssh would create its agent socket under TMPDIR if it accepted the request.
    sidecar_tmp = tmp_path / "sidecar-tmp"
    sidecar_tmp.mkdir()
    with running_sidecar(tmp_path, key, extra_env={"TMPDIR": str(sidecar_tmp)}) as sidecar:

        async def scenario() -> tuple[int | None, str, str]:
            async with await sidecar.connect(
                key, agent_forwarding=str(tmp_path / "agent.sock")
            ) as conn:
                result = await conn.run(protocol.CMD_VERSION)
                # checked while connected: an accepted agent listener lives as long as the conn
                assert list(sidecar_tmp.iterdir()) == []
                with pytest.raises(asyncssh.ChannelListenError) as listen:
                    await conn.forward_remote_path(str(tmp_path / "r.sock"), "/tmp/nowhere.sock")
                with pytest.raises(asyncssh.ChannelOpenError) as open_:
                    await conn.open_unix_connection("/run/anything.sock")
                return result.exit_status, str(listen.value), open_.value.reason

        status, _, _ = asyncio.run(scenario())
        assert status == 0
        assert list(sidecar_tmp.iterdir()) == []
        assert not (tmp_path / "r.sock").exists()


def _connect_addresses() -> list[str]:
    addresses = ["127.0.0.1"]
    if socket.has_ipv6:
        addresses.append("::1")
    addresses += non_loopback_addresses()
    return addresses


def test_remote_forward_carries_traffic_both_ways_on_all_interfaces(
    sidecar: Sidecar, key: ClientKey
) -> None:
    port = sidecar.allowed[0]
    addresses = _connect_addresses()
    big = os.urandom(3 * 1024 * 1024 + 17)  # several windows' worth, not packet-aligned

    async def scenario() -> list[tuple[str, bytes]]:
        results: list[tuple[str, bytes]] = []
        async with TagServer(b"laptop") as laptop, await sidecar.connect(key) as conn:
            # The client names "localhost"; the sidecar must still bind every interface.
            listener = await conn.forward_remote_port("localhost", port, "127.0.0.1", laptop.port)
            assert listener.get_port() == port
            for address in addresses:
                results.append((address, await exchange(address, port, address.encode())))
            results.append(("big", await exchange("127.0.0.1", port, big)))
        return results

    results = asyncio.run(scenario())
    for address, answer in results[:-1]:
        assert answer == b"laptop:" + address.encode(), address
    _, big_answer = results[-1]
    assert hashlib.sha256(big_answer).digest() == hashlib.sha256(b"laptop:" + big).digest()
    log = sidecar.wait_log("closed")
    assert f"remote forward port {port} bound on all interfaces (asked for localhost)" in log


def test_many_concurrent_forwarded_connections(sidecar: Sidecar, key: ClientKey) -> None:
    """A bounded burst: 64 connections at once, each with its own 64 KiB payload."""
    port = sidecar.allowed[0]
    payloads = [bytes([i]) * 65536 + str(i).encode() for i in range(64)]

    async def scenario() -> list[bytes]:
        async with TagServer(b"ok") as laptop, await sidecar.connect(key) as conn:
            await conn.forward_remote_port("", port, "127.0.0.1", laptop.port)
            return list(await asyncio.gather(*(exchange("127.0.0.1", port, p) for p in payloads)))

    answers = asyncio.run(scenario())
    assert answers == [b"ok:" + p for p in payloads]


def test_forwarded_connection_to_a_dead_laptop_port_is_closed_and_logged(
    sidecar: Sidecar, key: ClientKey
) -> None:
    port = sidecar.allowed[0]
    (dead,) = free_ports(1)

    async def scenario() -> bytes:
        async with await sidecar.connect(key) as conn:
            await conn.forward_remote_port("", port, "127.0.0.1", dead)
            try:
                return await exchange("127.0.0.1", port, b"anyone?")
            except ConnectionResetError:
                return b""

    assert asyncio.run(scenario()) == b""
    sidecar.wait_log("client refused the forwarded connection")


def test_disallowed_port_is_refused(sidecar: Sidecar, key: ClientKey) -> None:
    (other,) = free_ports(1)

    async def scenario() -> None:
        async with await sidecar.connect(key) as conn:
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("", other, "127.0.0.1", 9)
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("", 0, "127.0.0.1", 9)  # "any port" is not allowed
            with pytest.raises(OSError):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", other), 5)

    asyncio.run(scenario())
    log = sidecar.wait_log(f"port {other} is not in BRIDGE_PORTS")
    assert "allowed: " + ", ".join(str(p) for p in sorted(sidecar.allowed)) in log


def test_second_client_cannot_steal_a_held_port_but_takes_it_after_the_holder_leaves(
    sidecar: Sidecar, key: ClientKey
) -> None:
    port = sidecar.allowed[0]

    async def scenario() -> tuple[bytes, bytes]:
        async with TagServer(b"first") as first, TagServer(b"second") as second:
            holder = await sidecar.connect(key)
            await holder.forward_remote_port("", port, "127.0.0.1", first.port)
            # traffic on the port leaves TIME_WAIT sockets behind: rebinding must still work
            via_first = await exchange("127.0.0.1", port, b"one")
            async with await sidecar.connect(key) as thief:
                with pytest.raises(asyncssh.ChannelListenError):
                    await thief.forward_remote_port("", port, "127.0.0.1", second.port)
                assert await exchange("127.0.0.1", port, b"still") == b"first:still"
                holder.close()
                await holder.wait_closed()
                await asyncio.to_thread(sidecar.wait_ready, 503)
                await thief.forward_remote_port("", port, "127.0.0.1", second.port)
                via_second = await exchange("127.0.0.1", port, b"two")
            return via_first, via_second

    via_first, via_second = asyncio.run(scenario())
    assert via_first == b"first:one"
    assert via_second == b"second:two"
    log = sidecar.log()
    assert f"port {port} is held by another connected client" in log
    assert f"remote forward port {port} released" in log


def test_same_client_asking_twice_is_refused(sidecar: Sidecar, key: ClientKey) -> None:
    port = sidecar.allowed[0]

    async def scenario() -> None:
        async with await sidecar.connect(key) as conn:
            await conn.forward_remote_port("", port, "127.0.0.1", 9)
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("0.0.0.0", port, "127.0.0.1", 9)

    asyncio.run(scenario())
    sidecar.wait_log(f"port {port} is already forwarded by this client")


def test_bind_failure_is_refused_with_a_clear_log_line(sidecar: Sidecar, key: ClientKey) -> None:
    port = sidecar.allowed[0]
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind(("0.0.0.0", port))
        squatter.listen(1)

        async def scenario() -> None:
            async with await sidecar.connect(key) as conn:
                with pytest.raises(asyncssh.ChannelListenError):
                    await conn.forward_remote_port("", port, "127.0.0.1", 9)
                # the failed bind released the claim: the port is not "held"
                status, body = await asyncio.to_thread(sidecar.http, protocol.READY_PATH)
                assert (status, body["forwarded_ports"]) == (503, [])

        asyncio.run(scenario())
    finally:
        squatter.close()
    sidecar.wait_log(
        f"cannot listen on port {port} (all interfaces): Address already in use; "
        "another process in the pod already listens on it"
    )


def test_direct_tcpip_reaches_local_server_by_address_and_name(
    sidecar: Sidecar, key: ClientKey
) -> None:
    async def scenario() -> tuple[bytes, bytes, str]:
        async with TagServer(b"cluster-svc") as service, await sidecar.connect(key) as conn:
            answers = []
            for host in ("127.0.0.1", "localhost"):
                reader, writer = await conn.open_connection(host, service.port)
                writer.write(b"hello " + host.encode())
                writer.write_eof()
                answers.append(await asyncio.wait_for(reader.read(), 10))
                writer.close()
            (dead,) = free_ports(1)
            try:
                await conn.open_connection("127.0.0.1", dead)
                failure = "connected"
            except asyncssh.ChannelOpenError as exc:
                failure = exc.reason
            return answers[0], answers[1], failure

    by_address, by_name, failure = asyncio.run(scenario())
    assert by_address == b"cluster-svc:hello 127.0.0.1"
    assert by_name == b"cluster-svc:hello localhost"
    # the reason code first (the agent maps it), then the pod's own words for people
    assert failure.startswith("refused: cannot connect to 127.0.0.1:"), failure
    assert protocol.open_reason(failure) == (protocol.REASON_REFUSED, "Connection refused")


def test_ready_flips_with_the_forwards(sidecar: Sidecar, key: ClientKey) -> None:
    port = sidecar.allowed[0]
    assert sidecar.http(protocol.HEALTH_PATH)[0] == 200
    assert sidecar.http(protocol.READY_PATH) == (503, {"ready": False, "forwarded_ports": []})

    async def scenario() -> list[tuple[int, dict[str, object]]]:
        seen = []
        check = lambda: asyncio.to_thread(sidecar.http, protocol.READY_PATH)  # noqa: E731
        conn = await sidecar.connect(key)
        seen.append(await check())  # authenticated, no forward yet
        listener = await conn.forward_remote_port("", port, "127.0.0.1", 9)
        seen.append(await check())
        listener.close()
        await listener.wait_closed()
        await asyncio.to_thread(sidecar.wait_ready, 503)
        seen.append(await check())
        await conn.forward_remote_port("", port, "127.0.0.1", 9)
        seen.append(await check())
        conn.close()
        await conn.wait_closed()
        await asyncio.to_thread(sidecar.wait_ready, 503)
        seen.append(await check())
        return seen

    seen = asyncio.run(scenario())
    assert [s for s, _ in seen] == [503, 200, 503, 200, 503]
    assert seen[1][1] == {"ready": True, "forwarded_ports": [port]}
    # the health endpoint answers on IPv6 too, and unknown paths are 404
    if socket.has_ipv6:
        assert sidecar.http(protocol.HEALTH_PATH, host="::1")[0] == 200
    assert sidecar.http("/nope")[0] == 404


def test_ssh_port_listens_on_loopback_only(sidecar: Sidecar) -> None:
    for address in non_loopback_addresses():
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            assert sock.connect_ex((address, sidecar.ssh_port)) != 0, address
