"""bridge.transport.portforward against a small server speaking the server side of
v4.channel.k8s.io.

`FakeApiServer` implements what the Kubernetes API server does for
`GET .../pods/POD/portforward?ports=P` upgraded to a websocket: checks the subprotocol
and the bearer token, sends the 2-byte port on the data and error channels, relays
the data channel to a TCP backend on loopback (the "pod port"), and reports a failed
dial on the error channel. Served over HTTPS with its own CA and a server name that
does not match 127.0.0.1, so `tls_server_name` and the CA are exercised.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from kubernetes.aio.client import ApiClient, Configuration

from bridge.errors import BridgeError
from bridge.transport.portforward import SUBPROTOCOL, PortForwarder
from tests.unit.support import (
    Pki,
    cleanup,
    echo,
    echo_through,
    fake_forwarder,
    port_of,
    run,
    tcp_backend,
)

# -- tests ---------------------------------------------------------------------------------


def test_round_trip_of_a_few_megabytes_both_ways(tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_forwarder(tmp_path, echo, port=8080, pod="hello-bridge-x") as (
                api, forwarder):
            stream = await forwarder.open(8080)
            payload = os.urandom(6 * 1024 * 1024)
            received = await echo_through(stream.reader, stream.writer, payload, 100_000)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            await stream.close()
        assert api.server.seen_paths == [
            "/api/v1/namespaces/default/pods/hello-bridge-x/portforward?ports=8080"]
        assert api.server.seen_protocols == [SUBPROTOCOL]

    run(main())


def test_port_prefix_is_stripped_when_it_shares_a_frame_with_data(tmp_path: Path) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-hello\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> bytes:
        async with fake_forwarder(tmp_path, greet, port=22, namespace="ns", pod="pod",
                                  port_frames_together=True) as (_api, forwarder):
            stream = await forwarder.open(22)
            line = await stream.reader.readline()
            await stream.close()
            return line

    assert run(main()) == b"SSH-2.0-hello\r\n"


def test_error_channel_ends_the_stream_with_the_servers_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_forwarder(tmp_path, pod="hello-bridge-x") as (_api, forwarder):
            stream = await forwarder.open(8022)
            with pytest.raises(BridgeError) as err:
                await stream.reader.read(100)
            assert str(err.value) == (
                "port-forward to pod default/hello-bridge-x port 8022 failed: "
                "error forwarding port 8022 to pod: connection refused")
            await stream.close()

    run(main())


@pytest.mark.parametrize(
    ("status", "words"),
    [(403, "forbidden: you may not port-forward to pods in namespace default .*needs get "
           "and, from Kubernetes 1.35, create on pods/portforward"),
     (404, "the pod does not exist"),
     (401, "rejected the credentials")],
)
def test_handshake_refusals_are_one_line_errors(tmp_path: Path, status: int, words: str) -> None:
    async def main() -> None:
        async with fake_forwarder(tmp_path, pod="hello-bridge-x", status=status) as (
                _api, forwarder):
            with pytest.raises(BridgeError, match=words) as err:
                await forwarder.open(8022)
            assert "\n" not in str(err.value)
            assert str(err.value).startswith(
                "port-forward to pod default/hello-bridge-x port 8022 failed: ")

    run(main())


def test_token_is_refreshed_through_the_configuration_hook(tmp_path: Path) -> None:
    async def main() -> None:
        calls: list[int] = []

        async def refresh(config: Configuration) -> None:  # what exec plugins install
            calls.append(1)
            config.api_key["authorization"] = "fresh"

        async with fake_forwarder(tmp_path, echo, token="fresh") as (api, forwarder):
            api.config.api_key["authorization"] = "stale"
            api.config.refresh_api_key_hook = None
            with pytest.raises(BridgeError, match="rejected the credentials"):
                await forwarder.open(80)
            api.config.refresh_api_key_hook = refresh
            stream = await forwarder.open(80)
            stream.writer.write(b"ping")
            assert await stream.reader.readexactly(4) == b"ping"
            await stream.close()
            assert calls

    run(main())


def test_client_certificate_authentication(tmp_path: Path) -> None:
    async def main() -> bytes:
        async with fake_forwarder(tmp_path, echo, client_certs=True) as (_api, forwarder):
            stream = await forwarder.open(80)
            stream.writer.write(b"cert")
            answer = await stream.reader.readexactly(4)
            await stream.close()
            return answer

    assert run(main()) == b"cert"


def test_unknown_ca_is_a_tls_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_forwarder(tmp_path) as (api, forwarder):
            (tmp_path / "other").mkdir()
            other = Pki.create(tmp_path / "other")
            api.config.ssl_ca_cert = other.ca_file
            with pytest.raises(BridgeError, match="TLS error"):
                await forwarder.open(80)

    run(main())


def test_unreachable_api_server(tmp_path: Path) -> None:
    async def main() -> None:
        sock_server = await tcp_backend(echo)
        port = port_of(sock_server)
        sock_server.close()
        await sock_server.wait_closed()
        config = Configuration(host=f"https://127.0.0.1:{port}")
        client = ApiClient(configuration=config)
        forwarder = PortForwarder(client, "default", "p")
        try:
            with pytest.raises(BridgeError, match="cannot reach the API server"):
                await forwarder.open(80)
        finally:
            await cleanup(forwarder, client)

    run(main())


class Recorder(asyncio.Protocol):
    """Protocol that records what the transport does to it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.paused_writing = 0
        self.resumed_writing = 0
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future())
        self.grew = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)
        self.grew.set()

    def pause_writing(self) -> None:
        self.paused_writing += 1

    def resume_writing(self) -> None:
        self.resumed_writing += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def test_write_backpressure_pauses_and_resumes_the_protocol(tmp_path: Path) -> None:
    size = 8 * 1024 * 1024
    got = bytearray()
    release = asyncio.Event()
    done = asyncio.Event()

    async def slow_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()  # read nothing until told: the pipe fills up
        while len(got) < size and (data := await reader.read(65536)):
            got.extend(data)
        done.set()
        writer.close()

    async def main() -> None:
        async with fake_forwarder(tmp_path, slow_sink) as (_api, forwarder):
            transport, protocol = await forwarder.create_connection(Recorder, "p", 80)
            assert isinstance(protocol, Recorder)
            payload = os.urandom(size)
            for offset in range(0, size, 1 << 20):
                transport.write(payload[offset:offset + (1 << 20)])
            assert protocol.paused_writing == 1
            assert transport.get_write_buffer_size() > 0
            release.set()
            await done.wait()
            assert bytes(got) == payload
            assert protocol.resumed_writing == 1
            assert transport.get_write_buffer_size() == 0
            transport.close()
            assert await protocol.lost is None

    run(main())


def test_paused_reading_delivers_nothing_until_resumed(tmp_path: Path) -> None:
    size = 4 * 1024 * 1024
    payload = os.urandom(size)

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> None:
        async with fake_forwarder(tmp_path, source) as (_api, forwarder):
            transport, protocol = await forwarder.create_connection(Recorder, "p", 80)
            assert isinstance(protocol, Recorder)
            await protocol.grew.wait()
            transport.pause_reading()
            assert not transport.is_reading()
            await asyncio.sleep(0)  # a frame already being handed over may still land
            held = len(protocol.data)
            for _ in range(20):  # the sender keeps going; nothing may reach the protocol
                await asyncio.sleep(0.01)
                assert len(protocol.data) == held
            transport.resume_reading()
            while len(protocol.data) < size:
                protocol.grew.clear()
                await protocol.grew.wait()
            assert bytes(protocol.data) == payload
            transport.abort()
            assert await protocol.lost is None
            assert transport.is_closing()

    run(main())


def test_server_closing_gives_eof_then_connection_lost(tmp_path: Path) -> None:
    async def hello_and_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with fake_forwarder(tmp_path, hello_and_bye) as (_api, forwarder):
            stream = await forwarder.open(80)
            assert await stream.reader.read() == b"bye"
            assert stream.reader.at_eof()
            await stream.close()

    run(main())
