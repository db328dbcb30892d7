"""A kubeconfig `proxy-url: socks5://...` carries REST calls and the port-forward alike, through
a real SOCKS5 proxy: OpenSSH's dynamic forward (`ssh -D`) to a local sshd, whose debug log
names every connection it relayed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bridge.kube.client import ApiError, Kube
from bridge.transport.portforward import PortForwarder
from tests.unit.support import (
    SERVER_NAME,
    TOKEN,
    echo,
    port_of,
    run,
    serve_fake_api,
    tcp_backend,
)

SSHD = "/usr/sbin/sshd"
SETUP = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SETUP
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Socks:
    port: int
    log: Path

    def relayed_to(self, port: int) -> bool:
        """Whether sshd opened a direct-tcpip channel to 127.0.0.1:`port` for the client."""
        text = self.log.read_text(errors="replace")
        return f"target 127.0.0.1 port {port}" in text


@pytest.fixture
def socks(tmp_path: Path) -> Iterator[Socks]:
    if os.geteuid() != 0 or not os.access(SSHD, os.X_OK) or shutil.which("ssh") is None:
        pytest.skip("needs root and OpenSSH (openssh-server, openssh-client)")
    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True, stdin=subprocess.DEVNULL, timeout=30)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    ssh_port, socks_port = free_port(), free_port()
    (d / "sshd_config").write_text("\n".join([
        f"Port {ssh_port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PidFile none",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "AllowTcpForwarding local", "LogLevel DEBUG1", ""]))
    (d / "known_hosts").write_text(
        f"[127.0.0.1]:{ssh_port} {(d / 'host_key.pub').read_text()}")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = d / "sshd.log"
    with open(log, "wb") as out:
        sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ssh = None
    try:
        wait_port(ssh_port, sshd)
        ssh = subprocess.Popen(
            ["ssh", "-F", "/dev/null", "-N", "-T", "-o", "BatchMode=yes",
             "-o", "ExitOnForwardFailure=yes", "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
             "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
             "-i", str(d / "client_key"), "-p", str(ssh_port),
             "-D", f"127.0.0.1:{socks_port}", "root@127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(socks_port, ssh)
        yield Socks(socks_port, log)
    finally:
        for p in (ssh, sshd):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)


def test_socks_equipment_is_a_real_proxy(socks: Socks, tmp_path: Path) -> None:
    """curl through the same proxy: the log line the tests rely on appears."""
    target = free_port()
    with socket.create_server(("127.0.0.1", target)) as srv:
        srv.settimeout(SETUP)
        curl = subprocess.Popen(["curl", "-s", "-m", "5", "--socks5-hostname",
                                 f"127.0.0.1:{socks.port}", f"http://127.0.0.1:{target}/"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conn, _ = srv.accept()
        conn.close()
        curl.wait(timeout=30)
    assert socks.relayed_to(target)


def test_rest_and_port_forward_go_through_socks5(socks: Socks, tmp_path: Path) -> None:
    async def main() -> bytes:
        backend = await tcp_backend(echo)
        api, runner = await serve_fake_api(tmp_path, {80: port_of(backend)})
        api_port = int(api.config.host.rsplit(":", 1)[1])
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {
                "server": api.config.host, "certificate-authority": api.config.ssl_ca_cert,
                "tls-server-name": SERVER_NAME,
                "proxy-url": f"socks5://127.0.0.1:{socks.port}"}}],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
        kube = await Kube.connect(str(kubeconfig))
        try:
            # REST: the fake API serves only the port-forward, so a 404 is the answer, over
            # TLS checked against tls-server-name, through the proxy
            with pytest.raises(ApiError) as info:
                await kube.request("GET", "/version")
            assert info.value.status == 404, info.value
            assert socks.relayed_to(api_port)
            before = socks.log.read_text().count(f"target 127.0.0.1 port {api_port}")
            async with PortForwarder(kube.api_client, "default", "p") as forwarder:
                stream = await forwarder.open(80)
                stream.writer.write(b"sock")
                answer = await stream.reader.readexactly(4)
                await stream.close()
            after = socks.log.read_text().count(f"target 127.0.0.1 port {api_port}")
            assert after > before  # the websocket went through the proxy too
            return answer
        finally:
            await kube.close()
            await runner.cleanup()
            backend.close()

    assert run(asyncio.wait_for(main(), 60)) == b"sock"


def test_tls_failure_through_socks_is_one_attempt(socks: Socks, tmp_path: Path) -> None:
    """Without tls-server-name the certificate does not match: one connection through the
    proxy, one TLS error, no retries."""
    async def main() -> tuple[int, str]:
        api, runner = await serve_fake_api(tmp_path, {})
        api_port = int(api.config.host.rsplit(":", 1)[1])
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {
                "server": api.config.host, "certificate-authority": api.config.ssl_ca_cert,
                "proxy-url": f"socks5://127.0.0.1:{socks.port}"}}],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
        kube = await Kube.connect(str(kubeconfig))
        try:
            with pytest.raises(ApiError) as info:
                await kube.request("GET", "/version")
            relayed = socks.log.read_text().count(f"target 127.0.0.1 port {api_port}")
            return relayed, str(info.value)
        finally:
            await kube.close()
            await runner.cleanup()

    relayed, message = run(asyncio.wait_for(main(), 60))
    assert "TLS: " in message and "not valid for '127.0.0.1'" in message
    assert relayed == 1
