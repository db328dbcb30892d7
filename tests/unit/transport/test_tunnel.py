"""bridge.transport.tunnel against the real sidecar (`python -m sidecar`) as a local subprocess.

Direct loopback TCP (tunnel=None) and, once, SSH over bridge's own port-forward
(through the fake v4.channel.k8s.io API server of test_portforward).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from bridge.errors import BridgeError
from bridge.transport.tunnel import (
    Tunnel,
    check_version,
    new_client_key,
    parse_host_key,
    public_key_line,
)
from sidecar import protocol
from tests.unit.support import echo, exchange, fake_forwarder, free_port, port_of, run, sidecar

# -- pure helpers ----------------------------------------------------------------------------


def test_parse_host_key_takes_the_last_host_key_line() -> None:
    log = ("2026 sidecar: starting\nhost-key: ssh-ed25519 AAAAold\nnoise host-key: x\n"
           "host-key: ssh-ed25519 AAAAnew\n")
    assert parse_host_key(log) == "ssh-ed25519 AAAAnew"
    assert parse_host_key("no key here\n") is None


def test_client_keys_are_fresh_ed25519() -> None:
    first, second = new_client_key(), new_client_key()
    assert public_key_line(first).startswith("ssh-ed25519 AAAA")
    assert public_key_line(first).endswith(" bridge")
    assert public_key_line(first) != public_key_line(second)


def test_version_mismatch_message() -> None:
    check_version({"sidecar": "0.1.0", "protocol": protocol.PROTOCOL_VERSION})
    with pytest.raises(BridgeError) as err:
        check_version({"sidecar": "9.0.0", "protocol": protocol.PROTOCOL_VERSION + 1})
    message = str(err.value)
    assert f"speaks protocol {protocol.PROTOCOL_VERSION + 1} (sidecar 9.0.0)" in message
    assert f"this bridge speaks protocol {protocol.PROTOCOL_VERSION}" in message
    assert "--sidecar-image" in message


def test_version_mismatch_from_a_newer_sidecar_is_refused() -> None:
    """A stand-in SSH server answering `version` with a protocol this bridge does not speak."""
    client_key, host_key = new_client_key(), new_client_key()

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
            return key.public_data == client_key.public_data

    def process(proc: asyncssh.SSHServerProcess[str]) -> None:
        if proc.command == protocol.CMD_VERSION:
            reply = {"sidecar": "9.9.9", "protocol": protocol.PROTOCOL_VERSION + 1}
            proc.stdout.write(json.dumps(reply) + "\n")
        proc.exit(0)

    async def main() -> None:
        server = await asyncssh.create_server(Server, "127.0.0.1", 0,
                                              server_host_keys=[host_key],
                                              process_factory=process)
        port = server.sockets[0].getsockname()[1]
        try:
            tunnel = await Tunnel.connect(host="127.0.0.1", port=port, client_key=client_key,
                                          host_key=public_key_line(host_key))
            try:
                with pytest.raises(BridgeError) as err:
                    await tunnel.version()
            finally:
                await tunnel.close()
        finally:
            server.close()
        assert str(err.value).startswith(
            f"the sidecar speaks protocol {protocol.PROTOCOL_VERSION + 1} (sidecar 9.9.9) "
            f"but this bridge speaks protocol {protocol.PROTOCOL_VERSION}")

    run(main())


# -- against the real sidecar ------------------------------------------------------------


def test_version_and_env_round_trip() -> None:
    pod_env = {"DATABASE_URL": "postgres://u:p@db/x", "MULTI": "line one\nline 'two' $x\n",
               "KUBERNETES_SERVICE_HOST": "10.96.0.1"}

    async def main() -> tuple[dict[str, Any], dict[str, str]]:
        async with sidecar(pod_env) as side, side.tunnel() as tunnel:
            return await tunnel.version(), await tunnel.env()

    version, env = run(main())
    assert version["protocol"] == protocol.PROTOCOL_VERSION
    for name, value in pod_env.items():
        assert env[name] == value
    assert not [name for name in env if name.startswith(protocol.SETTINGS_PREFIX)]


def test_wrong_host_key_is_refused() -> None:
    async def main() -> None:
        async with sidecar() as side:
            impostor = new_client_key()  # any other ed25519 key
            with pytest.raises(BridgeError, match="host key other than the one in its log"):
                await side.connect(host_key=public_key_line(impostor))

    run(main())


def test_garbage_host_key_is_a_clear_error() -> None:
    async def main() -> None:
        with pytest.raises(BridgeError, match="not an OpenSSH public key"):
            await Tunnel.connect(host="127.0.0.1", port=1, client_key=new_client_key(),
                                 host_key="ssh-ed25519 not-base64!")

    run(main())


def test_wrong_client_key_is_refused() -> None:
    async def main() -> None:
        async with sidecar() as side:
            with pytest.raises(BridgeError, match="refused this session's SSH key"):
                await side.connect(client_key=new_client_key())

    run(main())


def test_nothing_listening_is_a_clear_error() -> None:
    async def main() -> None:
        with pytest.raises(BridgeError, match="SSH to the sidecar at 127.0.0.1:.* failed"):
            await Tunnel.connect(host="127.0.0.1", port=free_port(),
                                 client_key=new_client_key(), host_key=public_key_line(
                                     new_client_key()), timeout=10)

    run(main())


def test_remote_forward_carries_tcp_both_ways() -> None:
    async def main() -> None:
        local = await asyncio.start_server(echo, "127.0.0.1", 0)
        try:
            async with sidecar() as side, side.tunnel() as tunnel:
                await tunnel.forward(side.forward_port, "127.0.0.1", port_of(local))
                big = os.urandom(8 * 1024 * 1024)
                back = await exchange(side.forward_port, big)
                assert hashlib.sha256(back).digest() == hashlib.sha256(big).digest()
                small = [os.urandom(1000 + i) for i in range(20)]
                answers = await asyncio.gather(
                    *(exchange(side.forward_port, data) for data in small))
                assert answers == small
        finally:
            local.close()

    run(main())


def test_forward_of_a_port_the_pod_does_not_allow_is_refused() -> None:
    async def main() -> None:
        async with sidecar() as side, side.tunnel() as tunnel:
            with pytest.raises(BridgeError, match="refused to forward port"):
                await tunnel.forward(free_port(), "127.0.0.1", 1)

    run(main())


def test_wait_closed_returns_when_the_sidecar_dies() -> None:
    async def main() -> None:
        async with sidecar() as side:
            tunnel = await side.connect(keepalive_interval=1.0)
            waiting = asyncio.create_task(tunnel.wait_closed())
            await asyncio.sleep(0.1)
            assert not waiting.done()
            side.process.send_signal(signal.SIGKILL)
            async with asyncio.timeout(30):
                await waiting
            await tunnel.close()  # harmless after the loss

    run(main())


def test_ssh_over_the_port_forward(tmp_path: Path) -> None:
    """SSH through PortForwarder (websocket, TLS, token) to the sidecar, then a forward."""

    async def main() -> None:
        local = await asyncio.start_server(echo, "127.0.0.1", 0)
        try:
            async with (
                sidecar() as side,
                fake_forwarder(tmp_path, side.ssh_port, port=8022,
                               pod="hello-bridge-x") as (_api, forwarder),
                side.tunnel(host="hello-bridge-x", port=8022, tunnel=forwarder) as tunnel,
            ):
                await tunnel.version()
                assert tunnel.where == "the sidecar in pod default/hello-bridge-x"
                await tunnel.forward(side.forward_port, "127.0.0.1", port_of(local))
                big = os.urandom(4 * 1024 * 1024)
                back = await exchange(side.forward_port, big)
                assert hashlib.sha256(back).digest() == hashlib.sha256(big).digest()
        finally:
            local.close()

    run(main())


def test_port_forward_error_reaches_the_tunnel_caller(tmp_path: Path) -> None:
    async def main() -> None:
        # Nothing listens on 8022.
        async with fake_forwarder(tmp_path, pod="hello-bridge-x") as (_api, forwarder):
            with pytest.raises(BridgeError, match="port 8022 failed: .*connection refused"):
                await Tunnel.connect(host="hello-bridge-x", port=8022,
                                     client_key=new_client_key(),
                                     host_key=public_key_line(new_client_key()),
                                     tunnel=forwarder, timeout=10)

    run(main())


def test_withdraw_makes_the_sidecar_not_ready_while_its_forwards_still_carry_traffic() -> None:
    """The hand-back: the pod must leave the Service endpoints while connections that still
    reach it are answered by the laptop."""

    async def main() -> None:
        local = await asyncio.start_server(echo, "127.0.0.1", 0)
        try:
            async with sidecar() as side, side.tunnel() as tunnel:
                await tunnel.forward(side.forward_port, "127.0.0.1", port_of(local))
                assert await side.ready_status() == 200
                await tunnel.withdraw()
                assert await side.ready_status() == 503
                assert await exchange(side.forward_port, b"still here") == b"still here"
        finally:
            local.close()

    run(main())


# argv: PORT. Another user's listener on 127.0.0.1:PORT: prints "up", then for each connection
# the number of bytes it received before the connection ended.
SQUATTER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sys.argv[2:] == ["defer"]:  # the kernel makes no socket of a connection before data comes
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("up", flush=True)
while True:
    c, _ = s.accept()
    got = 0
    try:
        while data := c.recv(65536):
            got += len(data)
    except OSError:
        pass
    print(got, flush=True)
    c.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
@pytest.mark.parametrize("defer", [False, True])
def test_another_users_listener_on_the_local_port_gets_no_byte_of_a_forwarded_connection(
        defer: bool) -> None:
    """Issue 19.6: the ports were checked for another user's listener once a second; one that
    bound the port in between got the cluster's requests (6 in one try). Each connection is
    now proven: the developer's own listener gets the bytes; once another user listens there
    instead (inside the window: nothing polls here at all), their connection is closed before
    any byte was sent, and the session is told in one line. With TCP_DEFER_ACCEPT the
    connection has no socket yet (sock_diag names no owner for it: uid 0, root's, which this
    test is): the listener's owner is what counts."""
    port = free_port()
    told: list[str] = []

    async def main() -> None:
        own = await asyncio.start_server(echo, "127.0.0.1", port, reuse_address=True)
        async with sidecar() as side, side.tunnel() as tunnel:
            await tunnel.forward(side.forward_port, "127.0.0.1", port, on_foreign=told.append)
            assert await exchange(side.forward_port, b"GET /mine") == b"GET /mine"
            own.close()
            await own.wait_closed()
            squatter = await asyncio.create_subprocess_exec(
                "/usr/bin/python3", "-c", SQUATTER, str(port), *(["defer"] if defer else []),
                user=65534, group=65534,
                extra_groups=[], stdout=asyncio.subprocess.PIPE)
            try:
                assert squatter.stdout is not None
                assert (await squatter.stdout.readline()).strip() == b"up"
                reader, writer = await asyncio.open_connection("127.0.0.1", side.forward_port)
                writer.write(b"GET /secret HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n")
                writer.write_eof()
                try:  # closed (or reset) by the sidecar, no answer
                    assert await asyncio.wait_for(reader.read(), 30) == b""
                except ConnectionResetError:
                    pass
                writer.close()
                # a control connection straight to the listener: what it says before that one
                # is what it got through the tunnel (with TCP_DEFER_ACCEPT it never sees a
                # connection that brought nothing)
                _, control = await asyncio.open_connection("127.0.0.1", port)
                control.write(b"control")
                control.write_eof()
                async with asyncio.timeout(30):
                    said = [(await squatter.stdout.readline()).strip()]
                    while said[-1] != b"7":
                        said.append((await squatter.stdout.readline()).strip())
                control.close()
                assert said[:-1] in ([], [b"0"]), f"the squatter received {said[:-1]} bytes"
            finally:
                squatter.kill()
                await squatter.wait()
            assert len(told) == 1, told
            assert told[0] == (
                f"another user (uid 65534) took a connection to 127.0.0.1:{port} meant for "
                "your service (it listens there now): closed it before any of the cluster's "
                "bytes were sent; ending the session")

    run(main())
