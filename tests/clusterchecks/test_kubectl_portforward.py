"""Point 7 through a real `kubectl port-forward` (1.31+: SPDY/3.1 tunneled in a websocket,
subprotocol `SPDY/3.1+portforward.k8s.io`), to a pod serving HTTP on two ports bound to
127.0.0.1 only (so only something dialing inside the pod's netns reaches them)."""

from __future__ import annotations

import hashlib
import http.client
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.clusterchecks.support import localhost_web_pod, port_forward
from tests.equipment.clients import FORWARD_TIMEOUT, Kubectl, kubectl_port_forward
from tests.helpers import http_server

pytestmark = pytest.mark.cluster

SERVER = http_server("""
if self.path.startswith("/bytes/"):
    n = int(self.path.split("/")[2])
    body = (b"0123456789abcdef" * (n // 16 + 1))[:n]
else:
    body = f"port={port} pod={os.environ['POD_NAME']} path={self.path}".encode()
""", ports="(8080, 8081)", prelude="import hashlib", methods="""
def do_POST(self):
    data = self.rfile.read(int(self.headers["Content-Length"]))
    body = f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)
""")


@pytest.fixture
def web_pod(core_v1: Any, namespace: str) -> str:
    return localhost_web_pod(core_v1, namespace, "kpf", SERVER, (8080, 8081))


def _request(port: int, method: str, path: str, body: bytes | None = None
             ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_http_through_kubectl_port_forward(kubectl: Kubectl, namespace: str,
                                           web_pod: str) -> None:
    with kubectl_port_forward(kubectl, namespace, f"pod/{web_pod}", 8080) as fwd:
        # Several connections over the one SPDY session (header compression carries over).
        for i in range(3):
            status, body = _request(fwd.local[8080], "GET", f"/hello/{i}")
            assert (status, body) == (200, f"port=8080 pod=kpf path=/hello/{i}".encode())
        assert fwd.process.poll() is None
    assert "Handling connection for" in "".join(fwd.stdout)


def test_two_ports_at_once(kubectl: Kubectl, namespace: str, web_pod: str) -> None:
    with kubectl_port_forward(kubectl, namespace, f"pod/{web_pod}", 8080, 8081) as fwd:
        jobs = [(port, i) for i in range(4) for port in (8080, 8081)]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            results = list(pool.map(
                lambda job: _request(fwd.local[job[0]], "GET", f"/c{job[1]}"), jobs))
        assert results == [(200, f"port={port} pod=kpf path=/c{i}".encode())
                           for port, i in jobs]


def test_large_payloads_both_ways(kubectl: Kubectl, namespace: str, web_pod: str) -> None:
    size = 3_000_000  # many DATA frames, well past SPDY's default 64 KiB window
    with kubectl_port_forward(kubectl, namespace, f"pod/{web_pod}", 8080) as fwd:
        status, body = _request(fwd.local[8080], "GET", f"/bytes/{size}")
        assert status == 200 and body == (b"0123456789abcdef" * (size // 16 + 1))[:size]
        upload = bytes(range(256)) * (2_000_000 // 256)
        status, body = _request(fwd.local[8080], "POST", "/echo", upload)
        assert (status, body) == (200,
                                  f"{len(upload)} {hashlib.sha256(upload).hexdigest()}".encode())


def test_port_with_nothing_listening(kubectl: Kubectl, namespace: str, web_pod: str) -> None:
    with kubectl_port_forward(kubectl, namespace, f"pod/{web_pod}", 9999) as fwd:
        conn = http.client.HTTPConnection("127.0.0.1", fwd.local[9999], timeout=20)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.request("GET", "/")
            conn.getresponse()
        conn.close()
        # kubectl reports the kubelet-style error from the error stream, then gives up.
        assert fwd.wait_exit() != 0
    deadline = time.monotonic() + FORWARD_TIMEOUT
    while "lost connection to pod" not in "".join(fwd.stderr) and time.monotonic() < deadline:
        time.sleep(0.05)
    stderr = "".join(fwd.stderr)
    assert "error forwarding port 9999 to pod" in stderr
    assert "connection refused" in stderr
    assert "lost connection to pod" in stderr


def test_missing_pod_is_reported(kubectl: Kubectl, namespace: str) -> None:
    result = kubectl.run("-n", namespace, "port-forward", "pod/nope", ":8080", check=False,
                         timeout=FORWARD_TIMEOUT)
    assert result.returncode != 0
    assert 'pods "nope" not found' in result.stderr


def test_kubectl_and_websocket_v4_side_by_side(kubectl: Kubectl, core_v1: Any,
                                               namespace: str, web_pod: str) -> None:
    """The official client's v4.channel.k8s.io path keeps working next to kubectl's."""
    with kubectl_port_forward(kubectl, namespace, f"pod/{web_pod}", 8081) as fwd, \
            port_forward(core_v1, web_pod, namespace, 8080) as pf:
        sock = pf.socket(8080)
        sock.settimeout(20)
        sock.sendall(b"GET /v4 HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        assert data.endswith(b"port=8080 pod=kpf path=/v4")
        assert _request(fwd.local[8081], "GET", "/spdy") == (
            200, b"port=8081 pod=kpf path=/spdy")
