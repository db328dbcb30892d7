"""TLS flags and proxy choice: as kubectl, for REST and port-forward alike."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp_socks import ProxyConnector

from bridge.errors import BridgeError
from bridge.kube import netconfig
from bridge.kube.client import Kube
from tests.unit.support import SERVER_NAME, Pki, echo, fake_forwarder, run

PY313_DEFAULT = ssl.create_default_context


def python313_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ssl.create_default_context behave as on Python 3.13, which sets VERIFY_X509_STRICT
    (this interpreter may be older)."""
    def strict(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = PY313_DEFAULT(*args, **kwargs)
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context
    monkeypatch.setattr(ssl, "create_default_context", strict)


def test_strict_python_rejects_a_ca_without_key_identifiers(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The test's CA, like EKS's, has no key identifiers: what Python 3.13 refuses."""
    python313_defaults(monkeypatch)

    async def main() -> None:
        async with fake_forwarder(tmp_path, echo) as (api, _forwarder):
            context = ssl.create_default_context(cafile=api.config.ssl_ca_cert)
            host, port = api.config.host.removeprefix("https://").split(":")
            with pytest.raises(ssl.SSLCertVerificationError, match="Key Identifier"):
                await asyncio.open_connection(host, int(port), ssl=context,
                                              server_hostname=SERVER_NAME)

    run(main())


def test_port_forward_accepts_that_ca_as_kubectl_does(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    python313_defaults(monkeypatch)

    async def main() -> bytes:
        async with fake_forwarder(tmp_path, echo) as (_api, forwarder):
            stream = await forwarder.open(80)
            stream.writer.write(b"tls!")
            answer = await stream.reader.readexactly(4)
            await stream.close()
            return answer

    assert run(main()) == b"tls!"


def kubeconfig_for(tmp_path: Path, server: str, ca_file: str, **cluster: Any) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server,
                                               "certificate-authority": ca_file,
                                               "tls-server-name": SERVER_NAME, **cluster}}],
        "users": [{"name": "u", "user": {"token": "T"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u",
                                               "namespace": "ns"}}],
    }))
    return str(path)


async def tls_api(tmp_path: Path, seen: list[str]) -> tuple[web.AppRunner, Pki, str]:
    pki = Pki.create(tmp_path)

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"kind": "Deployment", "metadata": {"name": "hello"}})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, pki, f"https://127.0.0.1:{port}"


def test_rest_accepts_that_ca_and_ignores_netrc(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A ~/.netrc entry for the API server's host must neither replace nor clash with the
    bearer token (aiohttp's trust_env reads it)."""
    python313_defaults(monkeypatch)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    async def main() -> list[str]:
        seen: list[str] = []
        runner, pki, server = await tls_api(tmp_path, seen)
        try:
            kube = await Kube.connect(kubeconfig_for(tmp_path, server, pki.ca_file))
            async with kube:
                assert (await kube.get_deployment("hello"))["metadata"]["name"] == "hello"
        finally:
            await runner.cleanup()
        return seen

    assert run(main()) == ["Bearer T"]


def test_port_forward_ignores_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    async def main() -> bytes:
        async with fake_forwarder(tmp_path, echo) as (_api, forwarder):
            stream = await forwarder.open(80)
            stream.writer.write(b"ntrc")
            answer = await stream.reader.readexactly(4)
            await stream.close()
            return answer

    assert run(main()) == b"ntrc"


# -- the proxy choice ----------------------------------------------------------------------


def test_proxy_url_wins_over_the_environment() -> None:
    p = netconfig.proxy_for("https://api.example:6443", "socks5://jump:1080",
                            {"HTTPS_PROXY": "http://corp:3128"})
    assert p == netconfig.Proxy("socks5://jump:1080", "socks5")
    assert p is not None and p.socks
    assert netconfig.request_proxy(p) is None  # socks is carried by the connector


def test_environment_proxy_as_go_reads_it() -> None:
    env = {"HTTPS_PROXY": "corp:3128", "NO_PROXY": ".internal,10.0.0.0/8,api.other:6443"}
    got = netconfig.proxy_for("https://api.example:6443", None, env)
    assert got == netconfig.Proxy("http://corp:3128", "http")
    assert netconfig.proxy_for("https://k.internal:6443", None, env) is None
    assert netconfig.proxy_for("https://internal:6443", None, env) is None
    assert netconfig.proxy_for("https://10.1.2.3:6443", None, env) is None
    assert netconfig.proxy_for("https://api.other:6443", None, env) is None
    assert netconfig.proxy_for("https://api.other:443", None, env) is not None
    assert netconfig.proxy_for("https://127.0.0.1:6443", None, env) is None  # loopback
    assert netconfig.proxy_for("https://localhost:6443", None, env) is None
    assert netconfig.proxy_for("http://api.example", None, env) is None  # HTTP_PROXY unset
    assert netconfig.proxy_for("https://x:1", None, {"https_proxy": "http://p:1"}) is not None
    assert netconfig.proxy_for("https://x:1", None, {"HTTPS_PROXY": "http://p:1",
                                                     "NO_PROXY": "*"}) is None


def test_bad_proxy_url_is_a_one_line_error() -> None:
    with pytest.raises(BridgeError, match="not a proxy URL.*nothing was changed"):
        netconfig.proxy_for("https://a:1", "ftp://p:21", {})


def test_socks_proxy_gets_a_socks_connector_with_remote_dns() -> None:
    async def main() -> None:
        context = ssl.create_default_context()
        conn = netconfig.connector(context, netconfig.parse_proxy("socks5h://jump:1080"))
        try:
            assert isinstance(conn, ProxyConnector)
        finally:
            await conn.close()
        direct = netconfig.connector(context, None)
        assert not isinstance(direct, ProxyConnector)
        await direct.close()

    run(main())


def test_ssl_context_clears_only_the_strict_flag(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    python313_defaults(monkeypatch)
    pki = Pki.create(tmp_path)

    class Config:
        ssl_ca_cert = pki.ca_file
        cert_file = None
        key_file = None
        verify_ssl = True

    context = netconfig.ssl_context(Config())
    assert not context.verify_flags & ssl.VERIFY_X509_STRICT
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
