"""The link emulator (Toxiproxy) and the kubeconfig through it, checked against real clients:
plain sockets for reset and stall, kubectl for the kubeconfig (TLS verified with the cluster's
CA through a different address). The WAN figures' pure parts: RTT and link-fraction units."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.equipment.bench import toxiproxy, wan
from tests.equipment.bench.cluster import kubectl_path

# ---------------------------------------------------------------- pure


def test_linked_kubeconfig_moves_every_server_and_keeps_the_tls_name() -> None:
    config = {"clusters": [
        {"name": "a", "cluster": {"server": "https://127.0.0.1:6443",
                                  "certificate-authority-data": "Q0E="}},
        {"name": "b", "cluster": {"server": "https://api.example.test:443"}},
        {"name": "c", "cluster": {"server": "https://10.0.0.1:6443",
                                  "tls-server-name": "kubernetes"}},
    ]}
    out = wan.linked_kubeconfig(config, 9999)
    a, b, c = (x["cluster"] for x in out["clusters"])
    assert a == {"server": "https://127.0.0.1:9999", "certificate-authority-data": "Q0E="}
    assert b == {"server": "https://127.0.0.1:9999", "tls-server-name": "api.example.test"}
    assert c == {"server": "https://127.0.0.1:9999", "tls-server-name": "kubernetes"}
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"  # a copy
    assert wan.api_upstream({"clusters": config["clusters"][1:2]}) == "api.example.test:443"
    with pytest.raises(RuntimeError, match="one cluster"):
        wan.api_upstream(config)


def test_wan_figures_are_in_rtts_and_link_fractions() -> None:
    shape = toxiproxy.Shape("t", 20, 100e6)
    assert shape.bdp_bytes == 250_000
    side = wan.Side(keepalive=[0.02] * 10 + [0.04], connect=[0.05] * 3,
                    to_laptop=6.25e6, from_laptop=12.5e6)
    rows = {(label, unit): (b, ref, limit) for label, unit, b, ref, limit in
            wan.figures(wan.ShapeResult(shape, side, wan.Side(swap_start=[1.0])))}
    assert rows[("keep-alive request p50", "RTT")][0] == pytest.approx(1.0)
    assert rows[("keep-alive request p99", "RTT")][0] == pytest.approx(2.0)
    assert rows[("new connection + first byte p50", "RTT")][0] == pytest.approx(2.5)
    assert rows[("bulk to laptop", "x link")][0] == pytest.approx(0.5)
    assert rows[("bulk from laptop", "x link")][0] == pytest.approx(1.0)
    assert rows[("keep-alive request p50", "RTT")][1] is None  # the reference measured nothing
    assert rows[("keep-alive request p50", "RTT")][2] == ">= 1 RTT"


def test_serial_rtts_is_the_slope_of_set_up_time_over_rtt() -> None:
    def res(rtt: float, start: float) -> wan.ShapeResult:
        return wan.ShapeResult(toxiproxy.Shape("x", rtt, 1e6), wan.Side(swap_start=[start]),
                               wan.Side())
    assert wan.serial_rtts([res(20, 3.0), res(80, 4.8)]) == pytest.approx(30.0)
    assert wan.serial_rtts([res(20, 3.0)]) is None


# ---------------------------------------------------------------- against the real thing


@pytest.fixture(scope="module")
def link_server() -> Iterator[toxiproxy.Toxiproxy]:
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists() \
            and not (toxiproxy.cache_dir() / "bin" / "server").exists():
        pytest.skip("no Go toolchain to build Toxiproxy")
    with toxiproxy.running() as server:
        yield server


@pytest.fixture
def echo() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: _echo(c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def _echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        while data := conn.recv(65536):
            conn.sendall(data)


def _roundtrip(port: int, msg: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(msg)
        return s.recv(100)


def test_reset_cuts_open_connections_and_new_ones_work(link_server: toxiproxy.Toxiproxy,
                                                        echo: int) -> None:
    link = link_server.link("reset-test", f"127.0.0.1:{echo}")
    s = socket.create_connection(("127.0.0.1", link.port), timeout=10)
    s.sendall(b"a")
    assert s.recv(10) == b"a"
    link.reset()
    try:
        s.sendall(b"b")
        got = s.recv(10)
    except OSError:
        got = b""
    s.close()
    assert got == b""  # reset or closed: the open connection is gone
    assert _roundtrip(link.port) == b"ping"
    assert link.toxics() == []


def test_stall_holds_data_until_resume(link_server: toxiproxy.Toxiproxy, echo: int) -> None:
    link = link_server.link("stall-test", f"127.0.0.1:{echo}")
    with socket.create_connection(("127.0.0.1", link.port), timeout=10) as s:
        s.sendall(b"1")
        assert s.recv(10) == b"1"
        link.stall()
        s.sendall(b"2")
        s.settimeout(1.0)
        with pytest.raises(TimeoutError):
            s.recv(10)  # held, not lost and not closed
        link.resume()
        s.settimeout(10)
        assert s.recv(10) == b"2"
    assert link.toxics() == []


def test_shape_sets_latency_and_bandwidth_each_way(link_server: toxiproxy.Toxiproxy,
                                                   echo: int) -> None:
    link = link_server.link("shape-test", f"127.0.0.1:{echo}")
    link.set_shape(toxiproxy.Shape("t", 40, 8e6))
    got = {t["name"]: t for t in link_server.request("GET", "/proxies/shape-test/toxics")}
    assert got["latency_up"]["attributes"]["latency"] == 20
    assert got["latency_down"]["stream"] == "downstream"
    assert got["bandwidth_up"]["attributes"]["rate"] == 1000  # KB/s
    assert _roundtrip(link.port) == b"ping"
    link.set_shape(None)
    assert link.toxics() == []


@pytest.mark.cluster
def test_kubectl_works_through_the_linked_kubeconfig(cluster: Any,
                                                     link_server: toxiproxy.Toxiproxy,
                                                     tmp_path: Path) -> None:
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    link = link_server.link("kube-test", wan.api_upstream(config))
    linked = tmp_path / "kubeconfig"
    linked.write_text(yaml.safe_dump(wan.linked_kubeconfig(config, link.port)))
    out = subprocess.run([kubectl_path(), "--kubeconfig", str(linked), "get", "namespace",
                          "default", "-o", "name"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "namespace/default"


def test_a_stall_with_a_client_that_stopped_reading_resumes_and_the_api_answers(
        link_server: toxiproxy.Toxiproxy, echo: int) -> None:
    """What a long stall does to bridge: connections held in the stall stop being read (or are
    abandoned) by their client while data for them is queued. Resuming must not wedge the
    emulator (with an hour-long latency toxic as the stall, removing it blocked Toxiproxy's
    API for good: Shopify/toxiproxy#558)."""
    link = link_server.link("stall-unread", f"127.0.0.1:{echo}")
    s = socket.create_connection(("127.0.0.1", link.port), timeout=10)
    s.sendall(b"a")
    assert s.recv(10) == b"a"
    link.stall()
    sender = threading.Thread(target=lambda: _send_quietly(s, b"b" * 8_000_000), daemon=True)
    sender.start()  # blocks once every buffer on the way is full; never reads the echo
    sender.join(1.0)
    link.resume()
    try:
        assert link.toxics() == []  # the API answers (bounded: 10 s per request)
        assert _roundtrip(link.port) == b"ping"
    finally:
        s.close()


def _send_quietly(s: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        s.sendall(data)
