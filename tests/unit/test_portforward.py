"""bridge.portforward against a small server speaking the server side of v4.channel.k8s.io.

`FakeApiServer` implements what the Kubernetes API server does for
`GET .../pods/POD/portforward?ports=P` upgraded to a websocket: checks the subprotocol
and the bearer token, sends the 2-byte port on the data and error channels, relays
the data channel to a TCP backend on loopback (the "pod port"), and reports a failed
dial on the error channel. Served over HTTPS with its own CA and a server name that
does not match 127.0.0.1, so `tls_server_name` and the CA are exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes.aio.client import ApiClient, Configuration

from bridge.errors import BridgeError
from bridge.portforward import SUBPROTOCOL, PortForwarder

SERVER_NAME = "kubernetes.bridge.test"
TOKEN = "t0ken"
CLIENT_CN = "bridge-user"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


# -- a CA and a server certificate -------------------------------------------------------


def _cert(subject: str, key: Any, issuer: x509.Name | None, issuer_key: Any,
          ca: bool, sans: list[x509.GeneralName]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str = ""
    client_key_file: str = ""

    @classmethod
    def create(cls, directory: Path) -> Pki:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("bridge test CA", ca_key, None, ca_key, True, [])
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert("apiserver", key, ca.subject, ca_key, False,
                     [x509.DNSName(SERVER_NAME)])
        paths = cls(str(directory / "ca.crt"), str(directory / "srv.crt"),
                    str(directory / "srv.key"))
        Path(paths.ca_file).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        Path(paths.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        Path(paths.key_file).write_bytes(_pem_key(key))
        user_key = ec.generate_private_key(ec.SECP256R1())
        user = _cert(CLIENT_CN, user_key, ca.subject, ca_key, False, [])
        paths.client_cert_file = str(directory / "user.crt")
        paths.client_key_file = str(directory / "user.key")
        Path(paths.client_cert_file).write_bytes(user.public_bytes(serialization.Encoding.PEM))
        Path(paths.client_key_file).write_bytes(_pem_key(user_key))
        return paths


def _pem_key(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


# -- the server side of v4.channel.k8s.io ------------------------------------------------


@dataclass
class FakeApiServer:
    """Port-forward endpoint relaying to `backends[port]` on 127.0.0.1."""

    backends: dict[int, int]
    token: str = TOKEN
    client_certs: bool = False  # authenticate by client certificate instead of the token
    status: int | None = None  # answer every request with this status instead
    port_frames_together: bool = False  # send the port inside the first data frame
    seen_paths: list[str] = field(default_factory=list)
    seen_protocols: list[str] = field(default_factory=list)
    url: str = ""

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.seen_paths.append(request.path_qs)
        if self.status is not None:
            return web.Response(status=self.status, text="no")
        if self.client_certs:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            subject = dict(x[0] for x in (peer or {}).get("subject", ()))
            if subject.get("commonName") != CLIENT_CN:
                return web.Response(status=401, text="Unauthorized")
        elif request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="Unauthorized")
        port = int(request.query["ports"])
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=0)
        await ws.prepare(request)
        self.seen_protocols.append(ws.ws_protocol or "")
        prefix = port.to_bytes(2, "little")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.backends[port])
        except (OSError, KeyError):
            await ws.send_bytes(b"\x00" + prefix)
            await ws.send_bytes(b"\x01" + prefix)
            await ws.send_bytes(
                b"\x01" + f"error forwarding port {port} to pod: connection refused".encode())
            await ws.close()
            return ws
        if self.port_frames_together:
            first = await reader.read(1000)
            await ws.send_bytes(b"\x01" + prefix)
            await ws.send_bytes(b"\x00" + prefix + first)
        else:
            await ws.send_bytes(b"\x00" + prefix)
            await ws.send_bytes(b"\x01" + prefix)

        async def upstream() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    writer.write(msg.data[1:])
                    await writer.drain()
            writer.close()

        async def downstream() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(b"\x00" + data)
            await ws.close()

        up = asyncio.create_task(upstream())
        try:
            await downstream()
        finally:
            up.cancel()
            writer.close()
        return ws


@dataclass
class Running:
    server: FakeApiServer
    config: Configuration
    api_client: ApiClient


async def serve_fake_api(tmp_path: Path, backends: dict[int, int],
                         **options: Any) -> tuple[Running, web.AppRunner]:
    pki = Pki.create(tmp_path)
    server = FakeApiServer(backends, **options)
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/portforward", server.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    if server.client_certs:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca_file)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = Configuration(host=f"https://127.0.0.1:{port}")
    config.ssl_ca_cert = pki.ca_file
    config.tls_server_name = SERVER_NAME
    if server.client_certs:
        config.cert_file, config.key_file = pki.client_cert_file, pki.client_key_file
    else:
        config.api_key = {"authorization": TOKEN}
        config.api_key_prefix = {"authorization": "Bearer"}
    server.url = config.host
    return Running(server, config, ApiClient(configuration=config)), runner


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]


async def tcp_backend(handler: Handler) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def _cleanup(*things: Any) -> None:
    for thing in things:
        if isinstance(thing, web.AppRunner):
            await thing.cleanup()
        elif isinstance(thing, asyncio.Server):
            thing.close()
        elif isinstance(thing, PortForwarder | ApiClient):
            await thing.close()


@contextlib.asynccontextmanager
async def fake_forwarder(tmp_path: Path, backend: Handler | int | None = None, *,
                         port: int = 80, namespace: str = "default", pod: str = "p",
                         **options: Any) -> AsyncIterator[tuple[Running, PortForwarder]]:
    """A `FakeApiServer` and a `PortForwarder` to `namespace/pod` through it, all closed on exit.

    The pod's `port` relays to `backend`: a handler (served on loopback here, and closed with
    the rest) or the loopback port of something already listening; any other port is refused.
    """
    server = await tcp_backend(backend) if callable(backend) else None
    target = port_of(server) if server is not None else backend
    backends = {port: target} if isinstance(target, int) else {}
    api, runner = await serve_fake_api(tmp_path, backends, **options)
    forwarder = PortForwarder(api.api_client, namespace, pod)
    try:
        yield api, forwarder
    finally:
        await _cleanup(forwarder, api.api_client, runner, server)


async def echo_through(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       payload: bytes, chunk: int) -> bytes:
    """Write `payload` in writes of `chunk` bytes to an echo while reading back as many bytes;
    what came back."""
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(payload):
            data = await reader.read(1 << 20)
            assert data, "stream ended early"
            received.extend(data)

    reading = asyncio.create_task(read_all())
    for offset in range(0, len(payload), chunk):
        writer.write(payload[offset:offset + chunk])
        await writer.drain()
    await reading
    return bytes(received)


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
            await _cleanup(forwarder, client)

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



# -- through the local test cluster ----------------------------------------------------------

ECHO_POD = """
import socket, threading
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080))
srv.listen(16)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""


def make_pod(api_client: Any, namespace: str, name: str, container: dict[str, Any]) -> None:
    """Create a pod with one container and wait (bounded) until it runs."""
    import time

    from kubernetes import client

    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 1}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.status.phase == "Running":
            return
        time.sleep(0.1)
    raise AssertionError(f"pod {namespace}/{name} did not start: {pod.status}")


async def aio_client(kubeconfig: str) -> ApiClient:
    from kubernetes.aio import config as aio_config

    return await aio_config.new_client_from_config(config_file=kubeconfig)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_port_forward_through_the_test_cluster(cluster: Any, api_client: Any,
                                               namespace: str) -> None:
    make_pod(api_client, namespace, "echo", {
        "name": "main", "image": "python:3.12", "command": ["python3", "-c", ECHO_POD],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}})

    async def main() -> None:
        client = await aio_client(cluster.kubeconfig)
        forwarder = PortForwarder(client, namespace, "echo")
        try:
            stream = None
            for _ in range(100):  # the process may not listen yet: bounded retries
                stream = await forwarder.open(8080)
                stream.writer.write(b"hello")
                try:
                    if await stream.reader.readexactly(5) == b"hello":
                        break
                except (BridgeError, asyncio.IncompleteReadError):
                    await stream.close()
                    stream = None
                    await asyncio.sleep(0.2)
            assert stream is not None, "the pod never answered"
            payload = os.urandom(4 * 1024 * 1024)
            received = await echo_through(stream.reader, stream.writer, payload, len(payload))
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            await stream.close()

            nothing = await forwarder.open(9999)  # nothing listens there in the pod
            with pytest.raises(BridgeError, match=f"pod {namespace}/echo port 9999 failed: "):
                nothing.writer.write(b"x")
                await nothing.reader.read(10)
            await nothing.close()

            missing = PortForwarder(client, namespace, "no-such-pod")
            with pytest.raises(BridgeError, match="port 80 failed: the pod does not exist"):
                await missing.open(80)
            await missing.close()
        finally:
            await forwarder.close()
            await client.close()

    run(main())
