"""How bridge reaches the API server: TLS context and proxy, the same for REST and port-forward.

Matches kubectl (Go's net/http and crypto/tls) rather than Python's defaults:

- TLS: Python 3.13 turns on `VERIFY_X509_STRICT`, which rejects CAs that Go accepts (EKS's CA
  has no key identifiers); it is cleared, every other check stays.
- Proxy: the kubeconfig's `proxy-url` (http, https, socks5, socks5h) wins; else the
  HTTPS_PROXY / HTTP_PROXY / NO_PROXY variables as Go reads them (loopback never proxied). The
  choice is made here, once, so aiohttp's own `trust_env` stays off for every session: it would
  also read ~/.netrc, whose credentials clash with bridge's Authorization header.
- SOCKS5 (kubectl supports it) goes through `aiohttp_socks`; names are resolved by the proxy.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bridge.errors import BridgeError

PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


class ServerNameContext(ssl.SSLContext):
    """An SSLContext that checks (and sends as SNI) a fixed server name, the kubeconfig's
    `tls-server-name`, whatever name the connection was opened with: a SOCKS connector opens
    TLS itself with the target's host and ignores aiohttp's `server_hostname`."""

    server_name: str = ""

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False,
                 server_hostname: Any = None, session: Any = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side,
                                self.server_name or server_hostname, session)


def _client_context(cafile: str | None, cadata: Any, server_name: str) -> ssl.SSLContext:
    if not server_name:
        return ssl.create_default_context(cafile=cafile, cadata=cadata)
    # what create_default_context(SERVER_AUTH) sets up, in the subclass
    context = ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    context.server_name = server_name
    if cafile or cadata:
        context.load_verify_locations(cafile=cafile, cadata=cadata)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def ssl_context(config: Any) -> ssl.SSLContext:
    """The TLS settings of a kubernetes Configuration (CA, client certificate, verify,
    tls-server-name), with Python's extra strictness that Go does not have turned off."""
    try:
        context = _client_context(config.ssl_ca_cert, getattr(config, "ca_cert_data", None),
                                  str(getattr(config, "tls_server_name", None) or ""))
        if config.cert_file:
            context.load_cert_chain(config.cert_file, keyfile=config.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BridgeError(f"cannot load the kubeconfig's TLS files: {exc}") from None
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    if not config.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class Proxy:
    url: str
    scheme: str  # one of PROXY_SCHEMES

    @property
    def socks(self) -> bool:
        return self.scheme.startswith("socks")


def parse_proxy(url: str, origin: str = "proxy-url") -> Proxy:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES or not parts.hostname:
        raise BridgeError(f"{origin} {url!r} is not a proxy URL bridge understands "
                          f"(schemes: {', '.join(PROXY_SCHEMES)}); nothing was changed")
    return Proxy(url, scheme)


def _no_proxy_matches(host: str, port: int, no_proxy: str) -> bool:
    """Go's httpproxy NO_PROXY rules: "*", exact hosts, ".suffix"/"suffix" domains, IPs, CIDRs,
    optionally with :port."""
    host = host.lower().strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry_port = None
        if entry.count(":") == 1 or entry.startswith("["):
            name, _, p = entry.rpartition(":")
            if p.isdigit():
                entry, entry_port = name, int(p)
        entry = entry.strip("[]")
        if entry_port is not None and entry_port != port:
            continue
        if ip is not None:
            try:
                if ip == ipaddress.ip_address(entry):
                    return True
            except ValueError:
                pass
            continue
        if entry.startswith("*."):
            entry = entry[1:]
        if host == entry.lstrip(".") or host.endswith("." + entry.lstrip(".")):
            return True
    return False


def proxy_for(server: str, proxy_url: str | None, env: Mapping[str, str]) -> Proxy | None:
    """The proxy to reach `server` through, as kubectl picks it; None for a direct connection."""
    if proxy_url:
        return parse_proxy(proxy_url)
    parts = urlsplit(server)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass

    def var(name: str) -> str:
        return env.get(name) or env.get(name.lower()) or ""

    chosen = var("HTTPS_PROXY") if parts.scheme == "https" else var("HTTP_PROXY")
    if not chosen:
        return None
    if _no_proxy_matches(host, port, var("NO_PROXY")):
        return None
    if "://" not in chosen:
        chosen = "http://" + chosen  # Go accepts a bare host:port
    return parse_proxy(chosen, "the proxy variable")


def connector(context: ssl.SSLContext, proxy: Proxy | None, **kwargs: Any
              ) -> aiohttp.BaseConnector:
    """A connector for aiohttp: direct, or through a SOCKS proxy (HTTP proxies are passed
    per request as ``proxy=``, which aiohttp does itself)."""
    if proxy is not None and proxy.socks:
        try:
            from aiohttp_socks import ProxyConnector
        except ImportError:  # pragma: no cover - a declared dependency
            raise BridgeError("a socks5 proxy needs the aiohttp-socks package") from None
        url = proxy.url.replace("socks5h://", "socks5://", 1)
        return ProxyConnector.from_url(url, rdns=True, ssl=context, **kwargs)
    return aiohttp.TCPConnector(ssl=context, **kwargs)


def request_proxy(proxy: Proxy | None) -> str | None:
    """The ``proxy=`` argument for aiohttp requests (HTTP(S) proxies only)."""
    return proxy.url if proxy is not None and not proxy.socks else None


def configure_rest(configuration: Any, env: Mapping[str, str]) -> Proxy | None:
    """Set a loaded kubernetes.aio Configuration to connect as kubectl would: strict X509 flag
    off, no aiohttp trust_env (netrc), the chosen proxy; must run inside the event loop (the
    SOCKS connector is made here). Returns the proxy, for the port-forward to use too."""
    proxy = proxy_for(str(configuration.host), configuration.proxy, env)
    configuration.disable_strict_ssl_verification = True
    configuration.proxy = request_proxy(proxy)
    kwargs: dict[str, Any] = {"trust_env": False}
    if proxy is not None and proxy.socks:
        kwargs["connector"] = connector(ssl_context(configuration), proxy)
    configuration.client_session_kwargs = kwargs
    configuration.bridge_proxy = proxy  # read back by proxy_of (the port-forward)
    return proxy


def proxy_of(configuration: Any, env: Mapping[str, str]) -> Proxy | None:
    """The proxy `configure_rest` chose for this Configuration (or the same choice made now)."""
    if hasattr(configuration, "bridge_proxy"):
        chosen: Proxy | None = configuration.bridge_proxy
        return chosen
    return proxy_for(str(configuration.host), configuration.proxy, env)


async def close_rest(configuration: Any) -> None:
    """Close a connector `configure_rest` made (the ApiClient does not own it)."""
    kwargs = getattr(configuration, "client_session_kwargs", None) or {}
    conn = kwargs.get("connector")
    if conn is not None:
        await conn.close()
