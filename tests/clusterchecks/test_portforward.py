"""Point 7: pods/portforward through `kubernetes.stream.portforward` (the official client's
websocket implementation of v4.channel.k8s.io)."""

from __future__ import annotations

import http.client
from typing import Any

import pytest
from kubernetes.stream import portforward

from tests.clusterchecks.support import localhost_web_pod, port_forward, wait_for
from tests.helpers import http_server

pytestmark = pytest.mark.cluster

SERVER = http_server(
    'body = ("pod=" + os.environ["POD_NAME"] + " path=" + self.path).encode()', ports="[8080]")


@pytest.fixture
def web_pod(core_v1: Any, namespace: str) -> str:
    return localhost_web_pod(core_v1, namespace, "pf", SERVER, (8080,))


def _http_get(sock: Any, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_http_through_portforward(core_v1: Any, namespace: str, web_pod: str) -> None:
    with port_forward(core_v1, web_pod, namespace, 8080) as pf:
        sock = pf.socket(8080)
        sock.settimeout(20)
        response = _http_get(sock, "/hello")
        sock.close()
        assert response.startswith(b"HTTP/1.0 200") or response.startswith(b"HTTP/1.1 200")
        assert response.endswith(b"pod=pf path=/hello")
        assert pf.error(8080) is None


def test_two_sequential_forwards_and_large_payload(core_v1: Any, namespace: str,
                                                   web_pod: str) -> None:
    for i in range(2):
        with port_forward(core_v1, web_pod, namespace, 8080) as pf:
            sock = pf.socket(8080)
            sock.settimeout(20)
            response = _http_get(sock, "/" + "x" * 4000 + str(i))
            assert response.endswith(("x" * 4000 + str(i)).encode())


def test_error_channel_when_nothing_listens(core_v1: Any, namespace: str, web_pod: str) -> None:
    with port_forward(core_v1, web_pod, namespace, 9999) as pf:
        sock = pf.socket(9999)
        sock.settimeout(20)
        # The connection closes without data; the error channel says why.
        try:
            data = sock.recv(1024)
        except (TimeoutError, ConnectionError):
            data = b""
        assert data == b""
        sock.close()
        error = wait_for("an error on the error channel", lambda: pf.error(9999), within=10)
        assert "9999" in error


def test_portforward_to_missing_pod_is_404(core_v1: Any, namespace: str) -> None:
    from kubernetes.client.rest import ApiException
    with pytest.raises(ApiException) as info:
        portforward(core_v1.connect_get_namespaced_pod_portforward, "nope", namespace,
                    ports="80")
    # The client reports a failed websocket handshake as status 0 with the HTTP status text.
    assert "404" in str(info.value.reason)


def test_raw_http_client_through_portforward(core_v1: Any, namespace: str, web_pod: str
                                             ) -> None:
    with port_forward(core_v1, web_pod, namespace, 8080) as pf:
        conn = http.client.HTTPConnection("pod", 8080, timeout=20)
        conn.sock = pf.socket(8080)
        conn.request("GET", "/via-http-client")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"pod=pf path=/via-http-client"
        conn.close()
