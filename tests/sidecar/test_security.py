"""The sidecar against strangers (issue 13): peer text never forges a log line (item 4), a
bounded number of unauthenticated connections (item 6), direct-tcpip only for the session
key and never when switched off (item 9). Real `python -m sidecar` processes, real clients."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncssh
import pytest

from bridge.model import trust
from sidecar import protocol, settings
from sidecar.forwards import Tally
from sidecar.server import escape_text
from tests.helpers import FORGED_KEY, disconnect_packet
from tests.sidecar.harness import ClientKey, TagServer, exchange, make_key, running_sidecar


def test_a_disconnect_reason_cannot_forge_the_host_key_line(tmp_path: Path,
                                                           key: ClientKey) -> None:
    """The review: a pre-auth DISCONNECT whose reason held `\\nhost-key: ...` put a second
    host-key line in the pod log, and bridge pinned the last one."""
    with running_sidecar(tmp_path, key) as sidecar:
        with socket.create_connection(("127.0.0.1", sidecar.ssh_port), timeout=10) as s:
            s.sendall(b"SSH-2.0-mallory\r\n")
            s.recv(256)  # the server's banner
            s.sendall(disconnect_packet(
                f"bye\nhost-key: {FORGED_KEY}\n\x1b[2Jbridge: all fine"))
            while s.recv(4096):  # until the server hangs up
                pass
        text = sidecar.wait_log("closed")
        pod_log = f"{protocol.HOST_KEY_LOG_PREFIX}{sidecar.host_key_line}\n" + sidecar.log()
    assert "host-key: " + FORGED_KEY in text.replace("\\n", "\n")  # it was logged, escaped
    assert not any(line.startswith(protocol.HOST_KEY_LOG_PREFIX) for line in text.splitlines())
    assert "\x1b" not in text
    assert trust.host_key_announcement(pod_log) == sidecar.host_key_line


def test_escape_text() -> None:
    assert escape_text("plain text: ok") == "plain text: ok"
    assert escape_text("a\nb\r\x1b[31m\x00") == "a\\nb\\r\\x1b[31m\\x00"


def test_unauthenticated_connections_are_capped(tmp_path: Path, key: ClientKey) -> None:
    """MAX_PREAUTH_CONNECTIONS strangers sitting in the login; the next one is turned away at
    once (not after the login timeout), and the key holder still gets in."""
    with running_sidecar(tmp_path, key) as sidecar:
        idle = []
        try:
            for _ in range(protocol.MAX_PREAUTH_CONNECTIONS):
                s = socket.create_connection(("127.0.0.1", sidecar.ssh_port), timeout=10)
                s.recv(256)  # the banner: the server has accepted it
                idle.append(s)
            sidecar.wait_log(f"conn {protocol.MAX_PREAUTH_CONNECTIONS} ")
            extra = socket.create_connection(("127.0.0.1", sidecar.ssh_port), timeout=10)
            idle.append(extra)
            sidecar.wait_log("connections are already logging in")
        finally:
            for s in idle:
                s.close()

        async def key_holder() -> None:
            conn = await sidecar.connect(key)
            async with conn:
                result = await conn.run(protocol.CMD_VERSION, check=True)
                assert '"protocol"' in str(result.stdout)

        sidecar.wait_log(f"conn {protocol.MAX_PREAUTH_CONNECTIONS + 1} ")
        asyncio.run(key_holder())


def test_login_timeout_is_short() -> None:
    assert protocol.LOGIN_TIMEOUT_SECONDS <= 10


@pytest.mark.parametrize("switch", ["off", "on"])
def test_direct_tcpip_can_be_switched_off(tmp_path: Path, key: ClientKey, switch: str) -> None:
    async def run() -> None:
        async with TagServer(b"svc") as service:
            with running_sidecar(tmp_path, key,
                                 extra_env={protocol.ENV_DIRECT_TCPIP: switch}) as sidecar:
                conn = await sidecar.connect(key)
                async with conn:
                    if switch == "off":
                        with pytest.raises(asyncssh.ChannelOpenError, match="outbound"):
                            await conn.open_connection("127.0.0.1", service.port)
                        assert service.connections == 0
                    else:
                        listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1",
                                                                 service.port)
                        got = await exchange("127.0.0.1", listener.get_port(), b"hi")
                        assert got == b"svc:hi"
                        listener.close()

    asyncio.run(run())


def test_a_stranger_gets_no_channel_of_any_kind(tmp_path: Path, key: ClientKey) -> None:
    stranger = make_key(tmp_path, "id_stranger")

    async def run() -> None:
        with running_sidecar(tmp_path, key) as sidecar:
            with pytest.raises(asyncssh.PermissionDenied):
                await sidecar.connect(stranger)

    asyncio.run(run())


def test_direct_tcpip_setting() -> None:
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    base = {protocol.ENV_AUTHORIZED_KEY: public.strip(), protocol.ENV_PORTS: ""}
    assert settings.load(base).direct_tcpip is True
    assert settings.load({**base, protocol.ENV_DIRECT_TCPIP: "off"}).direct_tcpip is False
    with pytest.raises(settings.SettingsError, match=protocol.ENV_DIRECT_TCPIP):
        settings.load({**base, protocol.ENV_DIRECT_TCPIP: "maybe"})


def test_a_connections_tally_counts_into_the_sidecars() -> None:
    async def run() -> None:
        total = Tally()
        one = Tally(total)
        one.opened()
        one.opened()
        assert (one.open, total.open) == (2, 2)
        one.closed()
        one.closed()
        await asyncio.wait_for(total.wait_idle(), 1)

    asyncio.run(run())
