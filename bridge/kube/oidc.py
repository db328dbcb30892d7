"""The kubeconfig's `auth-provider: {name: oidc}` user: its id-token, renewed at the issuer.

What `kubernetes.aio`'s loader does with it: reads the id-token once when the client is made
(renewing it only if it is already within 5 minutes of `exp`), installs nothing to renew it
later or after a 401, never writes renewed tokens back (`load_kube_config` passes the *result*
of `save_changes()` as the persister, i.e. None), talks to the issuer with TLS verification
switched off when no `idp-certificate-authority-data` is given (and ignores
`idp-certificate-authority`), with no time limit, and fails as `oidc: failed to refresh access
token` without the issuer or the HTTP status. Here, as client-go's oidc provider does:

- `OidcConfig` is the provider's `config`, validated (idp-issuer-url over https, client-id;
  client-secret optional for public clients; the CA as a file or data). `extra-scopes` is
  accepted and not sent: a refresh keeps the scopes of the original grant (RFC 6749 section 6),
  and client-go does not send them either.
- `expiry` reads the JWT's `exp` (and `iat`) by decoding the payload; the signature is not
  checked: the client only needs to know when to renew, the API server verifies the token.
- `refresh` asks the issuer's token endpoint (from `.well-known/openid-configuration`) for a
  new id-token with grant_type=refresh_token, over TLS verified with the configured CA (else
  the system's), bounded in time; a rotated refresh-token is kept. Any failure is one line
  naming the issuer and the HTTP status and reason, and says how to log in again. Tokens are
  never put in a message.

Writing the new tokens back into the kubeconfig is `bridge/kube/kubeconfig_edit.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bridge.errors import BridgeError
from bridge.kube import netconfig

PROVIDER = "oidc"
REFRESH_TIMEOUT = 30.0  # seconds for discovery and the token request together
CONNECT_TIMEOUT = 10.0
LOGIN_AGAIN = ("log in again with the tool that wrote this kubeconfig's OIDC tokens "
               "(it rewrites id-token and refresh-token); the kubeconfig was not changed")
ANSWER_LIMIT = 64 * 1024  # bytes read from an issuer's answer


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str = ""
    id_token: str = ""
    refresh_token: str = ""
    ca_file: str = ""
    ca_data: str = ""  # PEM text
    extra_scopes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, provider: Any, base_dir: str | None = None) -> OidcConfig:
        """From a kubeconfig `user.auth-provider` named oidc; a relative CA path is resolved
        against the kubeconfig's directory."""
        def bad(why: str) -> BridgeError:
            return BridgeError(f"the kubeconfig's oidc auth-provider {why}; nothing was changed")

        if not isinstance(provider, Mapping) or provider.get("name") != PROVIDER:
            raise bad("is not a mapping named oidc")
        config = provider.get("config")
        if not isinstance(config, Mapping):
            raise bad("has no config")
        for key, value in config.items():
            if not isinstance(value, str):
                raise bad(f"has a {key} that is not a string")
        issuer = str(config.get("idp-issuer-url") or "")
        if urlsplit(issuer).scheme != "https" or not urlsplit(issuer).hostname:
            raise bad(f"has idp-issuer-url {issuer!r}, not an https URL (the API server "
                      "accepts only https issuers)")
        client_id = str(config.get("client-id") or "")
        if not client_id:
            raise bad("has no client-id")
        for key in ("id-token", "refresh-token"):
            if not str(config.get(key) or "").isprintable() or any(
                    ch.isspace() for ch in str(config.get(key) or "")):
                raise bad(f"has a {key} holding spaces or control characters")
        ca_data = ""
        if config.get("idp-certificate-authority-data"):
            try:
                ca_data = base64.b64decode(str(config["idp-certificate-authority-data"]),
                                           validate=True).decode()
            except (binascii.Error, ValueError):
                raise bad("has idp-certificate-authority-data that is not base64 PEM") from None
        ca_file = str(config.get("idp-certificate-authority") or "")
        if ca_file:
            ca_file = os.path.expanduser(ca_file)
            if base_dir and not os.path.isabs(ca_file):
                ca_file = os.path.join(base_dir, ca_file)
        scopes = tuple(s for s in str(config.get("extra-scopes") or "").split(",") if s)
        return cls(issuer, client_id, str(config.get("client-secret") or ""),
                   str(config.get("id-token") or ""), str(config.get("refresh-token") or ""),
                   ca_file, ca_data, scopes)


def claims(token: str) -> dict[str, Any]:
    """The JWT's payload, decoded without checking the signature (the API server does)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (three dot-separated parts)")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    data = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    if not isinstance(data, dict):
        raise ValueError("the JWT payload is not an object")
    return data


def expiry(token: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(exp, iat) of an id-token as UTC datetimes; None where absent. Raises ValueError for
    something that is not a JWT."""
    data = claims(token)

    def when(key: str) -> dt.datetime | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"the JWT's {key} is not a number")
        return dt.datetime.fromtimestamp(int(value), dt.UTC)

    return when("exp"), when("iat")


@dataclass(frozen=True)
class Tokens:
    id_token: str
    refresh_token: str  # the one to use next time (rotated or the same)


def tls_context(config: OidcConfig) -> ssl.SSLContext:
    """Verified TLS to the issuer: the configured CA (file and/or data), else the system's;
    Python's extra X509 strictness off, as for the API server (Go does not have it)."""
    try:
        context = ssl.create_default_context(cafile=config.ca_file or None,
                                             cadata=config.ca_data or None)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise BridgeError(f"cannot load the CA of the OIDC issuer {config.issuer} "
                          f"(idp-certificate-authority): {e}; nothing was changed") from None
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def _oauth_error(body: bytes, secrets: list[str]) -> str:
    """`error: error_description` of an OAuth error answer, one line, bounded, with any of
    `secrets` the issuer echoed blanked out; else ''."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return ""
    words = data["error"]
    if isinstance(data.get("error_description"), str):
        words += f": {data['error_description']}"
    for secret in secrets:
        words = words.replace(secret, "***")
    words = " ".join("".join(ch if ch.isprintable() else " " for ch in words).split())
    return f" ({words[:200]})"


async def refresh(config: OidcConfig, refresh_token: str, *, env: Mapping[str, str],
                  bound: float = REFRESH_TIMEOUT) -> Tokens:
    """A new id-token for the refresh token, from the issuer's token endpoint."""
    issuer = config.issuer

    def failed(why: str, login: bool = False) -> BridgeError:
        advice = LOGIN_AGAIN if login else "the kubeconfig was not changed"
        return BridgeError(f"cannot renew the OIDC id-token at {issuer}: {why}; {advice}")

    context = tls_context(config)
    proxy = netconfig.proxy_for(issuer, None, env)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
    discovery = issuer.rstrip("/") + "/.well-known/openid-configuration"
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    secrets = [v for v in (refresh_token, config.client_secret, config.id_token) if v]
    headers = {"Accept": "application/json"}
    if config.client_secret:  # client_secret_basic, form-encoded first (RFC 6749 2.3.1)
        pair = f"{quote(config.client_id, safe='')}:{quote(config.client_secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:  # a public client names itself
        form["client_id"] = config.client_id

    async def read(response: aiohttp.ClientResponse) -> bytes:
        body = b""
        while len(body) < ANSWER_LIMIT:
            chunk = await response.content.read(ANSWER_LIMIT - len(body))
            if not chunk:
                break
            body += chunk
        return body

    try:
        async with asyncio.timeout(bound), aiohttp.ClientSession(
                connector=netconfig.connector(context, proxy), timeout=timeout,
                trust_env=False) as session:
            via = netconfig.request_proxy(proxy)
            async with session.get(discovery, headers={"Accept": "application/json"},
                                   proxy=via) as r:  # redirects followed, as Go does
                body = await read(r)
                if r.status != 200:
                    raise failed(f"its discovery document {discovery} answered "
                                 f"{r.status} {r.reason}")
            try:
                endpoint = json.loads(body)["token_endpoint"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise failed("its discovery document names no token_endpoint") from None
            if not isinstance(endpoint, str) or urlsplit(endpoint).scheme != "https":
                raise failed("its discovery document's token_endpoint is not an https URL")
            async with session.post(endpoint, data=form, headers=headers, proxy=via,
                                    allow_redirects=False) as r:
                body = await read(r)
                if r.status != 200:
                    raise failed(f"the token endpoint answered {r.status} {r.reason}"
                                 f"{_oauth_error(body, secrets)}",
                                 login=400 <= r.status < 500)
    except TimeoutError:
        raise failed(f"the issuer did not answer within {bound:g}s") from None
    except aiohttp.ClientConnectorCertificateError as e:
        raise failed(f"TLS verification failed ({e.certificate_error}); check "
                     "idp-certificate-authority(-data)") from None
    except aiohttp.ClientSSLError as e:
        raise failed(f"TLS failed ({e})") from None
    except aiohttp.ClientConnectorError as e:
        raise failed(f"cannot reach the issuer ({e.os_error.strerror or e.os_error})") from None
    except aiohttp.ClientError as e:
        raise failed(f"the connection failed ({type(e).__name__}: {e})") from None
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        answer = None
    if not isinstance(answer, dict):
        raise failed("the token endpoint's answer is not a JSON object")
    id_token = answer.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise failed("the token endpoint's answer holds no id_token (was the scope openid "
                     "requested at login? some providers give none on refresh)", login=True)
    try:
        expiry(id_token)
    except ValueError as e:
        raise failed(f"the new id_token is not usable ({e})") from None
    if not id_token.isprintable() or any(ch.isspace() for ch in id_token):
        raise failed("the new id_token holds spaces or control characters")
    rotated = answer.get("refresh_token")
    if not isinstance(rotated, str) or not rotated or not rotated.isprintable() or any(
            ch.isspace() for ch in rotated):
        rotated = refresh_token
    return Tokens(id_token, rotated)
