"""The outbound proxy against real clients (torsocks, curl) and a real sidecar over SSH, no
cluster: what the clients get, and that the connections went through the sidecar."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from bridge.transport import outbound
from tests.sidecar.harness import ClientKey, make_key, non_loopback_addresses, running_sidecar

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not shutil.which("torsocks") or not shutil.which("curl"),
                                 reason="needs torsocks and curl")]

CLIENT = r"""
import socket, sys, urllib.request
host, port = sys.argv[1], int(sys.argv[2])
print(urllib.request.urlopen(f"http://{host}:{port}/", timeout=30).read().decode().strip())
try:
    socket.getaddrinfo("no-such-name.invalid", 80)
    print("resolved")
except socket.gaierror as e:
    print("gaierror")
try:
    socket.create_connection((host, 1), timeout=30)
    print("connected")
except ConnectionRefusedError:
    print("refused")
"""


@pytest.fixture
def key(tmp_path: Path) -> ClientKey:
    return make_key(tmp_path, "id_bridge")


async def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode() + err.decode()


async def _web(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nfound\n")
    await writer.drain()
    writer.close()


def test_torsocks_and_curl_through_the_sidecar(tmp_path: Path, key: ClientKey) -> None:
    addrs = [a for a in non_loopback_addresses() if ":" not in a]
    if not addrs:
        pytest.skip("no non-loopback IPv4 address")
    host = addrs[0]
    with running_sidecar(tmp_path, key) as sidecar:

        async def scenario() -> None:
            server = await asyncio.start_server(_web, host, 0)
            port = server.sockets[0].getsockname()[1]
            async with await sidecar.connect(key) as conn, \
                    outbound.serve(lambda: conn, outbound.Mode.INJECT) as ob:
                env = {"PATH": "/usr/bin:/bin", **ob.env()}
                code, out = await _run(*ob.wrap_argv([sys.executable, "-c", CLIENT, host,
                                                      str(port)]), env=env)
                assert code == 0, out
                # and torsocks stays quiet: only the app's own output
                assert out.split() == ["found", "gaierror", "refused"], out
                # curl, SOCKS5 with the session's credentials, and HTTP proxy with them.
                pe = ob.attach_env()
                code, out = await _run("curl", "-sS", "--max-time", "30", "--proxy",
                                       pe["ALL_PROXY"], f"http://{host}:{port}/")
                assert (code, out.strip()) == (0, "found")
                code, out = await _run("curl", "-sS", "--max-time", "30", "--proxy",
                                       pe["HTTP_PROXY"], f"http://{host}:{port}/")
                assert (code, out.strip()) == (0, "found")
                # Wrong or no credentials: refused.
                bad = f"socks5h://{ob.user}:wrong@127.0.0.1:{ob.port}"
                code, out = await _run("curl", "-sS", "--max-time", "30", "--proxy", bad,
                                       f"http://{host}:{port}/")
                assert code != 0 and "found" not in out
                code, out = await _run("curl", "-sS", "--max-time", "30", "--proxy",
                                       f"http://127.0.0.1:{ob.port}", f"http://{host}:{port}/")
                assert "found" not in out and "credentials required" in out
            server.close()

        asyncio.run(scenario())
        log = sidecar.log()
        # torsocks' connect and curl's two went out from the sidecar.
        assert log.count(f"direct-tcpip to {host}:") >= 3, log
