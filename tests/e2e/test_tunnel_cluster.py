"""The port-forward and the tunnel against the local test cluster (moved from tests/unit, which
needs no cluster): a real pod, bridge's own port-forward, SSH to the sidecar image."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import pytest
from kubernetes.aio.client import ApiClient

from bridge.errors import BridgeError
from bridge.transport.portforward import PortForwarder
from bridge.transport.tunnel import Tunnel, new_client_key, parse_host_key, public_key_line
from sidecar import protocol
from tests.unit.support import echo, echo_through, exchange, port_of, run

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
        "name": "main", "image": "python:3.11-slim", "command": ["python3", "-c", ECHO_POD],
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


# -- through the local test cluster ----------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_tunnel_over_the_test_cluster(cluster: Any, api_client: Any, namespace: str) -> None:
    """The sidecar image in a pod; SSH over bridge's port-forward; a remote forward that
    carries traffic sent to the pod's IP inside the cluster network."""
    from kubernetes import client as k8s

    key = new_client_key()
    make_pod(api_client, namespace, "proxy", {
        "name": "proxy", "image": protocol.DEFAULT_IMAGE,
        "env": [{"name": protocol.ENV_AUTHORIZED_KEY, "value": public_key_line(key)},
                {"name": protocol.ENV_PORTS, "value": "8080"},
                {"name": "GREETING", "value": "from the pod\nsecond line"}]})
    core = k8s.CoreV1Api(api_client)
    host_key = None
    for _ in range(300):  # bounded: the sidecar prints its key once it listens
        try:
            host_key = parse_host_key(core.read_namespaced_pod_log("proxy", namespace))
        except k8s.ApiException:
            host_key = None
        if host_key:
            break
        time.sleep(0.1)
    assert host_key, "the sidecar never printed its host key"
    pod_ip = core.read_namespaced_pod("proxy", namespace).status.pod_ip

    async def main() -> None:
        api = await aio_client(cluster.kubeconfig)
        forwarder = PortForwarder(api, namespace, "proxy")
        local = await asyncio.start_server(echo, "127.0.0.1", 0)
        try:
            tunnel = await Tunnel.connect(host="proxy", port=protocol.DEFAULT_SSH_PORT,
                                          client_key=key, host_key=host_key, tunnel=forwarder)
            try:
                assert (await tunnel.version())["protocol"] == protocol.PROTOCOL_VERSION
                assert (await tunnel.env())["GREETING"] == "from the pod\nsecond line"
                await tunnel.forward(8080, "127.0.0.1", port_of(local))
                payload = os.urandom(1024 * 1024)
                back = await exchange(8080, payload, host=pod_ip)
                assert back == payload
            finally:
                await tunnel.close()
        finally:
            local.close()
            await forwarder.close()
            await api.close()

    run(main())
