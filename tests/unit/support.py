"""Shared helpers of the unit suite: one way to start a sidecar, one free_port, one fake
Kubernetes API server (the v4.channel.k8s.io port-forward side) and one fake of bridge's narrow
API interface (`kube.Api`). No cluster, no root."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import datetime as dt
import io
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncssh
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes.aio.client import ApiClient, Configuration

from bridge.kube.client import (
    TICK,
    ApiError,
    Kube,
    NotFound,
    WatchFailed,
    error_type,
    follow,
    wait_with,
)
from bridge.model import plan, state
from bridge.model.endpoints import SERVICE_NAME_LABEL
from bridge.model.target import PortMap
from bridge.progress import Progress
from bridge.swap import restore
from bridge.swap.lease import Lease
from bridge.swap.session import first_bridge_error
from bridge.transport.portforward import SUBPROTOCOL, PortForwarder
from bridge.transport.tunnel import Tunnel, new_client_key, parse_host_key, public_key_line
from sidecar import protocol

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


async def cleanup(*things: Any) -> None:
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
        await cleanup(forwarder, api.api_client, runner, server)


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



# -- the sidecar as a local subprocess --------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sidecar:
    process: asyncio.subprocess.Process
    ssh_port: int
    forward_port: int
    host_key: str
    client_key: asyncssh.SSHKey
    log: list[str]
    health_port: int = 0

    async def ready_status(self) -> int:
        """The HTTP status of the sidecar's readiness endpoint."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.health_port)
        writer.write(f"GET {protocol.READY_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        writer.close()
        return status

    async def connect(self, **kwargs: Any) -> Tunnel:
        options: dict[str, Any] = {"host": "127.0.0.1", "port": self.ssh_port,
                                   "client_key": self.client_key, "host_key": self.host_key}
        options.update(kwargs)
        return await Tunnel.connect(**options)

    @contextlib.asynccontextmanager
    async def tunnel(self, **kwargs: Any) -> AsyncIterator[Tunnel]:
        """`connect`, and close the tunnel afterwards."""
        tunnel = await self.connect(**kwargs)
        try:
            yield tunnel
        finally:
            await tunnel.close()


@contextlib.asynccontextmanager
async def sidecar(extra_env: dict[str, str] | None = None) -> AsyncIterator[Sidecar]:
    client_key = new_client_key()
    ssh_port, health_port, forward_port = free_port(), free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        protocol.ENV_AUTHORIZED_KEY: public_key_line(client_key),
        protocol.ENV_PORTS: str(forward_port),
        protocol.ENV_SSH_PORT: str(ssh_port),
        protocol.ENV_HEALTH_PORT: str(health_port),
        protocol.ENV_BIND: "127.0.0.1",
        **(extra_env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    log: list[str] = []
    try:
        assert process.stdout is not None
        host_key = None
        async with asyncio.timeout(30):
            while host_key is None:
                line = await process.stdout.readline()
                assert line, f"sidecar exited before printing its host key: {log}"
                log.append(line.decode())
                host_key = parse_host_key(line.decode())
        yield Sidecar(process, ssh_port, forward_port, host_key, client_key, log, health_port)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def exchange(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Send `payload` to an echo at host:port while reading the echo back."""
    reader, writer = await asyncio.open_connection(host, port)
    received = await echo_through(reader, writer, payload, len(payload))
    writer.close()
    return received


# -- a fake of bridge's narrow API interface (kube.Api) ----------------------------------------

def api_error(status: int, message: str) -> ApiError:
    """The typed error the API edge raises for `status`."""
    return error_type(status)(message, status)


class FakeKube:
    """Deployments in a dict; merge patches honour metadata.resourceVersion (409 if stale).
    `fail` maps a method name to a list of exceptions raised by its next calls."""

    namespace = "ns"
    context = "ctx"

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.fail: dict[str, list[Exception]] = {}
        self.calls: list[str] = []
        self.after: dict[str, Callable[[], None]] = {}  # method -> run after its next call
        self.delay = 0.0  # seconds each list_pods takes
        self.on_patch: Callable[[str, dict[str, Any]], None] | None = None  # may raise
        self.pods: list[dict[str, Any]] = []
        self.services: list[dict[str, Any]] = []
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.replicasets: dict[str, dict[str, Any]] = {}
        self.watched: list[tuple[str, str, str]] = []  # wait_for's (kind, labels, fields)

    def add(self, name: str, replicas: int, annotations: dict[str, str] | None = None,
            **meta: Any) -> None:
        self.rv += 1
        self.deployments[name] = {
            "metadata": {"name": name, "annotations": dict(annotations or {}),
                         "resourceVersion": str(self.rv), "generation": 1,
                         "uid": f"uid-{name}", **meta},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}}},
            "status": {"observedGeneration": 1, "readyReplicas": replicas,
                       "updatedReplicas": replicas},
        }

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        pending = self.fail.get(method)
        if pending:
            raise pending.pop(0)

    def _leave(self, method: str) -> None:
        hook = self.after.pop(method, None)
        if hook:
            hook()

    async def get_deployment(self, name: str) -> dict[str, Any]:
        self._enter("get_deployment")
        if name not in self.deployments:
            raise api_error(404, f'deployments.apps "{name}" not found')
        out = copy.deepcopy(self.deployments[name])
        self._leave("get_deployment")
        return out

    async def patch_deployment(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self._enter("patch_deployment")
        if self.on_patch is not None:
            self.on_patch(name, patch)
        dep = self.deployments[name]
        meta = patch.get("metadata", {})
        if meta.get("resourceVersion") and meta["resourceVersion"] != \
                dep["metadata"]["resourceVersion"]:
            raise api_error(409, "the object has been modified")
        for k, v in (meta.get("annotations") or {}).items():
            if v is None:
                dep["metadata"]["annotations"].pop(k, None)
            else:
                dep["metadata"]["annotations"][k] = v
        if "spec" in patch:
            dep["spec"].update(patch["spec"])
            dep["status"]["readyReplicas"] = dep["status"]["updatedReplicas"] = \
                dep["spec"]["replicas"]
        self.rv += 1
        dep["metadata"]["resourceVersion"] = str(self.rv)
        self._leave("patch_deployment")
        return copy.deepcopy(dep)

    async def delete_deployment(self, name: str) -> bool:
        self._enter("delete_deployment")
        existed = self.deployments.pop(name, None) is not None
        self._leave("delete_deployment")
        return existed

    async def list_pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        self._enter("list_pods")
        await anyio.sleep(self.delay)
        pods = copy.deepcopy(self.pods)
        self._leave("list_pods")
        return pods

    async def list_services(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.services)

    async def get_endpoints(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.endpoints.get(name, {}))

    async def service_ready_ips(self, service: str) -> set[str]:
        """The ready addresses of `self.endpoints[service]` (written as v1 Endpoints)."""
        ep = self.endpoints.get(service, {})
        return {str(a.get("ip")) for s in ep.get("subsets") or []
                for a in s.get("addresses") or []}

    async def get_replicaset(self, name: str) -> dict[str, Any]:
        raise api_error(404, f'replicasets.apps "{name}" not found')

    async def list_replicasets(self, label_selector: str) -> list[dict[str, Any]]:
        return []

    async def list_replicasets_strict(self, label_selector: str) -> list[dict[str, Any]]:
        self._enter("list_replicasets_strict")
        return [copy.deepcopy(rs) for rs in self.replicasets.values()]

    async def patch_replicaset(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self._enter("patch_replicaset")
        rs = self.replicasets[name]
        for k, v in (patch.get("metadata", {}).get("annotations") or {}).items():
            if v is None:
                rs["metadata"]["annotations"].pop(k, None)
            else:
                rs["metadata"]["annotations"][k] = v
        return copy.deepcopy(rs)

    async def list_limit_ranges(self) -> list[dict[str, Any]]:
        return []

    async def list_scaled_objects(self) -> list[dict[str, Any]]:
        return []

    async def list_deployments(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(d) for d in self.deployments.values()]

    async def create_deployment(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.created.append(manifest)
        return manifest

    async def get_service(self, name: str) -> dict[str, Any]:
        for svc in self.services:
            if svc["metadata"]["name"] == name:
                return copy.deepcopy(svc)
        raise api_error(404, f'services "{name}" not found')

    async def pod_log(self, name: str, container: str | None = None, *,
                      tail_lines: int | None = None, limit_bytes: int | None = None) -> str:
        return ""

    def slices(self) -> list[dict[str, Any]]:
        """`self.endpoints` (v1 Endpoints) as the EndpointSlices a server would keep."""
        return [{"addressType": "IPv4", "metadata": {"labels": {SERVICE_NAME_LABEL: name}},
                 "endpoints": [{"addresses": [a.get("ip")]} for s in ep.get("subsets") or []
                               for a in s.get("addresses") or []]}
                for name, ep in self.endpoints.items()]

    async def wait_for(self, kind: str, label_selector: str, check: Any, *,
                       tick: float = TICK, field_selector: str = "") -> Any:
        """bridge.kube.client's wait, fed by polling this fake's lists (it serves no watch).
        Deployments are read by the name in `metadata.name=NAME` (through get_deployment)."""
        self.watched.append((kind, label_selector, field_selector))

        async def list_once() -> tuple[list[dict[str, Any]], str]:
            if kind == "pods":
                return await self.list_pods(label_selector), ""
            if kind == "deployments":
                name = field_selector.removeprefix("metadata.name=")
                try:
                    return [await self.get_deployment(name)], ""
                except NotFound:
                    return [], ""
            return self.slices(), ""

        async def no_watch(rv: str, bound: float) -> AsyncGenerator[Any, None]:
            raise WatchFailed("the fake serves no watch")
            yield

        async def feed(publish: Callable[[list[dict[str, Any]]], None]) -> None:
            await follow(list_once, no_watch, publish, poll=tick)
        return await wait_with(feed, check, tick=tick)


async def serve_get(handle: Callable[[web.Request], Any]) -> tuple[web.AppRunner, str]:
    """An HTTP server on 127.0.0.1 answering every GET with `handle`: its runner (clean it
    up) and its URL."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def kube_serving(routes: dict[str, Callable[[web.Request], Any]]) -> AsyncIterator[Kube]:
    """bridge's real `Kube` (namespace `ns`, context `ctx`) against a plain-HTTP server on
    127.0.0.1 answering GET on `routes` (aiohttp paths such as
    "/api/v1/namespaces/{ns}/pods") and 404 elsewhere; both closed on exit."""
    app = web.Application()
    for path, handle in routes.items():
        app.router.add_get(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    kube = Kube(ApiClient(Configuration(host=url)), "ns", "ctx", url)
    try:
        yield kube
    finally:
        await kube.close()
        await runner.cleanup()


# ------------------------------------------------------------------ locks, restores (swap)


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def lock(session: str = "s1", owner: str = "ann@laptop") -> state.Lock:
    return state.Lock(session=session, owner=owner, replicas=2, proxy=f"hello-bridge-{session}",
                      ports="8080", started_at=T0)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore, "RETRY", dataclasses.replace(restore.RETRY, base=0.01,
                                                              cap=0.01, within=1.0))


def add_proxy(kube: FakeKube, lk: state.Lock, original: str = "hello") -> None:
    """The proxy Deployment as bridge creates it: its labels, marker and owner reference."""
    kube.add(lk.proxy, 1, {state.PROXY_FOR_LABEL: original},
             labels={state.MANAGED_BY_LABEL: state.MANAGED_BY, state.SESSION_LABEL: lk.session,
                     state.PROXY_FOR_LABEL: original},
             ownerReferences=[{"kind": "Deployment", "name": original,
                               "uid": f"uid-{original}"}])


def run_restore(kube: FakeKube, **kw: Any) -> tuple[restore.Outcome, str]:
    out = io.StringIO()

    async def main() -> restore.Outcome:
        return await restore.restore(kube, "hello", Progress(stream=out),  # type: ignore[arg-type]
                                     **kw)

    return anyio.run(main), out.getvalue()


def lease_on(kube: FakeKube, lk: state.Lock) -> Lease:
    lease = Lease(kube, "hello", lk, Progress(stream=io.StringIO()))
    lease.proxy_uid = f"uid-{lk.proxy}"  # the proxy Deployment this session created
    return lease


FORGED_AT = state.format_time(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))


def forged(**fields: str) -> dict[str, str]:
    base = {state.SESSION: "x", state.OWNER: "mallory", state.REPLICAS: "1",
            state.PROXY: "hello-bridge-x", state.PORTS: "8080", state.STARTED_AT: FORGED_AT,
            state.HEARTBEAT: FORGED_AT}
    out = {**base, **{getattr(state, k.upper()): v for k, v in fields.items()}}
    return {k: v for k, v in out.items() if v != "<absent>"}


def snapshot(kube: FakeKube) -> dict[str, Any]:
    import copy
    return copy.deepcopy(kube.deployments)


ORIGINAL: dict[str, Any] = {
    "metadata": {"name": "hello", "namespace": "shop", "resourceVersion": "7",
                 "annotations": {"deployment.kubernetes.io/revision": "3"}},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "hello"}},
        "template": {
            "metadata": {"labels": {"app": "hello", "tier": "web"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "mig:1"}],
                "volumes": [{"name": "cfg", "configMap": {"name": "hello-cfg"}}],
                "containers": [
                    {"name": "app", "image": "hello:1", "command": ["/app"], "args": ["--x"],
                     "env": [{"name": "A", "value": "1"},
                             {"name": "S",
                              "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                     "envFrom": [{"configMapRef": {"name": "hello-env"}}],
                     "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}],
                     "ports": [{"name": "http", "containerPort": 8080}],
                     "workingDir": "/srv/app",
                     "livenessProbe": {"httpGet": {"path": "/l", "port": 8080}},
                     "readinessProbe": {"httpGet": {"path": "/r", "port": 8080}},
                     "startupProbe": {"exec": {"command": ["true"]}},
                     "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}},
                    {"name": "logger", "image": "log:1",
                     "livenessProbe": {"tcpSocket": {"port": 9100}}},
                ],
            },
        },
    },
}


def options(*ports: PortMap) -> plan.Options:
    return plan.Options(container="app", ports=ports or (PortMap(8080, 8080, "http"),),
                        session="s1", owner="ann@laptop", authorized_key="ssh-ed25519 AAAA bridge",
                        image="sidecar:test")


# ------------------------------------------------------------------ the phases' fakes (swap)


def sidecar_status(state: dict, last: dict | None = None) -> dict:  # type: ignore[type-arg]
    cs = {"name": "web", "state": state, "restartCount": 1 if last else 0}
    if last:
        cs["lastState"] = last
    return {"status": {"phase": "Running", "containerStatuses": [cs]}}


def make_linker(kube: FakeKube, ports: list, progress: Progress | None = None):  # type: ignore[no-untyped-def,type-arg]
    from bridge.swap.link import Linker, LinkSpec

    async def ours() -> None:
        pass

    return Linker(kube, lambda pod: None, LinkSpec("abcd", "web", 8022, None, ports),
                  progress or Progress(stream=io.StringIO()), ours)


class FakeTunnel:
    def __init__(self, closed: bool = False) -> None:
        self.closed = closed
        self.withdrawn = False
        self.last_forwarded = 0.0  # no connection came through the tunnel

    def is_closed(self) -> bool:
        return self.closed

    async def withdraw(self) -> None:
        self.withdrawn = True


class FakeLinker:
    """Stands in for link.Linker in the hand-over and hand-back: records what was asked."""

    def __init__(self, links: list, log: list[str] | None = None) -> None:  # type: ignore[type-arg]
        from bridge.swap.link import LinkSpec

        self.links = links
        self.current = links[0]
        self.spec = LinkSpec("abcd", "web", 8022, None, [])
        self.forwards: list[tuple[object, float]] = []
        self.reconnects = 0
        self.close_after_forward: set[int] = set()
        self.log = log if log is not None else []

    async def reconnect(self, old, *, forward: bool, within: float | None):  # type: ignore[no-untyped-def]
        assert old is self.current and not forward
        self.reconnects += 1
        self.current = self.links[min(self.reconnects, len(self.links) - 1)]
        return self.current

    async def forward(self, link, patience: float = 0.0) -> None:  # type: ignore[no-untyped-def]
        self.forwards.append((link, patience))
        if id(link) in self.close_after_forward:
            link.tunnel.closed = True

    async def check_pod(self, pod) -> None:  # type: ignore[no-untyped-def]
        pass

    async def withdraw(self) -> bool:
        self.log.append("withdraw")
        await self.current.tunnel.withdraw()
        return True


def ready_pod(name: str = "proxy-pod", ready: bool = True, ip: str = "10.0.0.9") -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": name, "labels": {"bridge-k8s.io/session": "abcd"}},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def locked(kube: FakeKube, session: str = "abcd", replicas: int = 2):  # type: ignore[no-untyped-def]
    import datetime as dt

    from bridge.model import state

    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    lk = state.Lock(session=session, owner="me@here", replicas=replicas, proxy="hello-bridge",
                    ports="80", started_at=t)
    kube.add("hello", replicas, state.encode(lk))
    return lk


def hand_over(kube: FakeKube, linker: FakeLinker, stop=lambda: False):  # type: ignore[no-untyped-def]
    from bridge.swap.handover import HandOver
    from bridge.swap.lease import Lease

    lk = locked(kube)
    progress = Progress(stream=io.StringIO())
    return HandOver(kube, linker, Lease(kube, "hello", lk, progress), {},  # type: ignore[arg-type]
                    progress, 10.0, stop)


def watched_lock(kube: FakeKube, *, proxy: bool):  # type: ignore[no-untyped-def]
    import datetime as dt

    from bridge.model import state

    # the holder's clock is an hour ahead: it must not matter
    t = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    lk = state.Lock(session="s1", owner="ann@laptop", replicas=2, proxy="hello-bridge-s1",
                    ports="80", started_at=t)
    kube.add("hello", 0, state.encode(lk))
    if proxy:
        add_proxy(kube, lk)
        kube.deployments[lk.proxy]["metadata"]["annotations"].update(
            state.beat_annotations(7, t))
    return lk


def clear_way(kube: FakeKube, ttl: float, during=None):  # type: ignore[no-untyped-def]
    from bridge.model.outcome import Outcome
    from bridge.swap.lease import clear_the_way

    out = io.StringIO()

    async def main():  # type: ignore[no-untyped-def]
        async with anyio.create_task_group() as tg:
            if during is not None:
                tg.start_soon(during)
            try:
                return await clear_the_way(kube, await kube.get_deployment("hello"), ttl=ttl,
                                           bound=5, progress=Progress(stream=out),
                                           outcome=Outcome())
            finally:
                tg.cancel_scope.cancel()

    try:
        return anyio.run(main), out.getvalue()
    except BaseExceptionGroup as eg:
        e = first_bridge_error(eg)
        if e is None:
            raise
        e.add_note(out.getvalue())
        raise e from None


class SlowKube(FakeKube):
    """An API server a link away: read number i (from 0) takes delays[i] seconds, then none."""

    def __init__(self, delays: list[float]) -> None:
        super().__init__()
        self.delays = delays

    async def get_deployment(self, name: str) -> dict[str, Any]:
        if self.delays:
            await anyio.sleep(self.delays.pop(0))
        return await super().get_deployment(name)


class Rendezvous:
    """Calls that must be in flight together (one round trip, not one each): each `arrive`
    waits, bounded, until `n` have arrived, so calls made one after another fail instead of
    passing slower. `entered` says which arrived, in order."""

    def __init__(self, n: int = 2) -> None:
        self.n = n
        self.entered: list[str] = []
        self._all_in = anyio.Event()

    async def arrive(self, what: str) -> None:
        self.entered.append(what)
        if len(self.entered) == self.n:
            self._all_in.set()
        with anyio.fail_after(5):
            await self._all_in.wait()
