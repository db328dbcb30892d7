"""OIDC auth-provider credentials: a small OpenID issuer (HTTPS on 127.0.0.1 with a CA made
here; discovery and a token endpoint that mints signed JWTs, counts refreshes, can rotate the
refresh-token and can refuse), checked first against the official synchronous `kubernetes`
client's own oidc refresh, then driving bridge's `Kube` against an API server that accepts only
unexpired id-tokens the issuer signed."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import oauthlib.oauth2
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.errors import BridgeError
from bridge.kube import credentials, kubeconfig_edit, oidc
from bridge.kube.client import Kube
from bridge.kube.credentials import OidcToken
from tests.unit.support import serve_get

SECRET = b"issuer-signing-key"
CLIENT_ID = "kubernetes"
CLIENT_SECRET = "s3cr:et/+"  # characters that need form-encoding in a Basic header


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict[str, Any]) -> str:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def verify(token: str, now: dt.datetime) -> bool:
    """What an API server does with an id-token: signature, then expiry."""
    try:
        head, body, sig = token.split(".")
        good = b64url(hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest())
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return False
    return hmac.compare_digest(sig, good) and claims["exp"] > now.timestamp()


class Clock:
    """The test's clock, starting at the real time (the first token check runs in
    `Kube.connect`, before the test can hand the source this clock)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def __call__(self) -> dt.datetime:
        return self.now


# -- a CA and a certificate for 127.0.0.1 --------------------------------------------------


def make_ca(directory: Path, name: str) -> tuple[Any, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def server_cert(directory: Path, ca_key: Any, ca: x509.Certificate) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "issuer.crt", directory / "issuer.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# -- the issuer ---------------------------------------------------------------------------


class Issuer:
    """An OpenID provider's refresh grant: discovery, then a token endpoint that accepts a
    known refresh-token from the known client (HTTP Basic or form parameters) and mints an
    id-token valid `lifetime` seconds from `clock`. Runs in its own thread and loop, so a
    blocking client (the official synchronous one) can use it too."""

    def __init__(self, directory: Path, clock: Any = None, lifetime: int = 3600) -> None:
        self.ca_key, self.ca, self.ca_file = make_ca(directory, "issuer-ca")
        self.cert, self.key = server_cert(directory, self.ca_key, self.ca)
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.lifetime = lifetime
        self.valid_refresh = {"r1"}
        self.rotate = False
        self.refuse = False
        self.hang = False
        self.refreshes = 0
        self.discoveries = 0
        self.seen: list[dict[str, str]] = []  # the token requests' forms (+ basic auth)
        self.minted: list[str] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def mint(self) -> str:
        now = self.clock()
        token = jwt({"iss": self.url, "aud": CLIENT_ID, "sub": "dev@example.com",
                     "iat": int(now.timestamp()), "exp": int(now.timestamp()) + self.lifetime})
        self.minted.append(token)
        return token

    async def discovery(self, request: web.Request) -> web.Response:
        self.discoveries += 1
        return web.json_response({"issuer": self.url, "token_endpoint": f"{self.url}/token",
                                  "authorization_endpoint": f"{self.url}/auth",
                                  "jwks_uri": f"{self.url}/keys"})

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        seen = {k: str(v) for k, v in form.items()}
        auth = request.headers.get("Authorization", "")
        client_id, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        if auth.startswith("Basic "):
            from urllib.parse import unquote
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            seen["basic"] = f"{unquote(user)}:{unquote(password)}"
            client_id, secret = unquote(user), unquote(password)
        self.seen.append(seen)
        if self.hang:
            await self._released.wait()
        if client_id != CLIENT_ID or secret != CLIENT_SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if self.refuse or form.get("refresh_token") not in self.valid_refresh:
            return web.json_response({"error": "invalid_grant", "error_description":
                                      f"Token is not active: {form.get('refresh_token')}"},
                                     status=400)
        self.refreshes += 1
        refresh = str(form["refresh_token"])
        if self.rotate:
            self.valid_refresh.discard(refresh)
            refresh = f"r{self.refreshes + 1}"
            self.valid_refresh.add(refresh)
        return web.json_response({"access_token": f"access-{self.refreshes}",
                                  "token_type": "Bearer", "expires_in": self.lifetime,
                                  "id_token": self.mint(), "refresh_token": refresh})

    async def _start(self) -> None:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_post("/token", self.token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        await web.SockSite(self._runner, sock, ssl_context=context).start()

    def __enter__(self) -> Issuer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._loop.call_soon_threadsafe(self._released.set)
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


def ca_data(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(path: Path, server: str, provider_config: dict[str, str]) -> Path:
    """A kubeconfig with a comment, a flow-style entry and another user, to see that only the
    tokens change when they are written back."""
    config = "\n".join(f"        {k}: {json.dumps(v)}" for k, v in provider_config.items())
    path.write_text(
        "# the team's clusters\n"
        "apiVersion: v1\nkind: Config\ncurrent-context: oidc\n"
        f"clusters:\n- name: k\n  cluster: {{server: {server}}}\n"
        "contexts:\n- name: oidc\n  context: {cluster: k, user: dev}\n"
        "users:\n- name: other\n  user:\n    token: static-token   # keep me\n"
        "- name: dev\n  user:\n    auth-provider:\n      name: oidc\n      config:\n"
        f"{config}\n")
    path.chmod(0o600)
    return path


def provider(issuer: Issuer, id_token: str, refresh: str | None = "r1",
             **extra: str) -> dict[str, str]:
    config = {"idp-issuer-url": issuer.url, "client-id": CLIENT_ID,
              "client-secret": CLIENT_SECRET,
              "idp-certificate-authority-data": ca_data(issuer.ca_file),
              "extra-scopes": "groups,email", "id-token": id_token}
    if refresh is not None:
        config["refresh-token"] = refresh
    config.update(extra)
    return config


def token_at(issued: dt.datetime, lifetime: int) -> str:
    return jwt({"iss": "x", "aud": CLIENT_ID, "iat": int(issued.timestamp()),
                "exp": int(issued.timestamp()) + lifetime})


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)


# -- the equipment against a real client ----------------------------------------------------


def test_issuer_refreshes_the_official_sync_clients_expired_token(tmp_path: Path) -> None:
    """kubernetes.config (the synchronous client) implements the oidc auth-provider: an expired
    id-token is renewed at this issuer and written back, an unexpired one is left alone."""
    from kubernetes import client as sync_client
    from kubernetes import config as sync_config

    with Issuer(tmp_path) as issuer:
        issuer.rotate = True
        now = dt.datetime.now(dt.UTC)
        expired = token_at(now - dt.timedelta(hours=2), 3600)
        path = kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", provider(issuer, expired))
        configuration = sync_client.Configuration()
        sync_config.load_kube_config(str(path), client_configuration=configuration,
                                     persist_config=True)
        assert issuer.refreshes == 1 and issuer.discoveries == 1
        assert issuer.seen[0]["grant_type"] == "refresh_token"
        assert issuer.seen[0]["refresh_token"] == "r1"
        assert issuer.seen[0]["basic"] == f"{CLIENT_ID}:{CLIENT_SECRET}"
        new = issuer.minted[-1]
        assert configuration.api_key["BearerToken"] == f"Bearer {new}"
        assert verify(new, dt.datetime.now(dt.UTC))
        saved = yaml.safe_load(path.read_text())["users"][1]["user"]["auth-provider"]["config"]
        assert saved["id-token"] == new and saved["refresh-token"] == "r2"

        again = sync_client.Configuration()
        sync_config.load_kube_config(str(path), client_configuration=again)
        assert issuer.refreshes == 1  # the renewed token is still good: not asked again
        assert again.api_key["BearerToken"] == f"Bearer {new}"

        issuer.refuse = True  # and a refusal is one to that client too
        path = kubeconfig(tmp_path / "kc2", "https://127.0.0.1:1", provider(issuer, expired))

        with pytest.raises(oauthlib.oauth2.InvalidGrantError):
            sync_config.load_kube_config(str(path),
                                         client_configuration=sync_client.Configuration())
        assert issuer.refreshes == 1


# -- bridge ----------------------------------------------------------------------------------


class Api:
    """Accepts only id-tokens the issuer signed whose exp is after the test clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.revoked: set[str] = set()
        self.tokens: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.tokens.append(token)
        if not verify(token, self.clock.now) or token in self.revoked:
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized",
                                      "message": "Unauthorized"}, status=401)
        return web.json_response({"kind": "Deployment", "metadata": {"name": "hello"}})


def oidc_source(kube: Kube, clock: Clock) -> OidcToken:
    source = credentials.installed(kube.api_client.configuration)
    assert isinstance(source, OidcToken)
    source.clock = clock
    return source


def saved_config(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text())["users"][1]["user"]["auth-provider"]["config"])


def test_a_valid_id_token_is_used_without_the_issuer_then_renewed_before_it_expires(
        tmp_path: Path) -> None:
    clock = Clock()
    with Issuer(tmp_path, clock) as issuer:
        issuer.rotate = True
        first = token_at(clock.now, 3600)
        path = kubeconfig(tmp_path / "kc", "", provider(issuer, first))
        api = Api(clock)
        before = path.read_text()

        async def main() -> None:
            runner, server = await serve_get(api.handle)
            path.write_text(before.replace("server: }", f"server: {server}}}"))
            original = path.read_text()
            kube = await Kube.connect(str(path))
            oidc_source(kube, clock)
            try:
                await kube.get_deployment("hello")
                clock.advance(3600 - 70)  # 70 s left: still this token
                await kube.get_deployment("hello")
                assert issuer.refreshes == 0 and issuer.discoveries == 0
                assert set(api.tokens) == {first}
                assert path.read_text() == original
                clock.advance(20)  # 50 s left, inside the 60 s margin: renewed first
                await kube.get_deployment("hello")
                assert issuer.refreshes == 1
                assert api.tokens[-1] == issuer.minted[-1] != first
                # what a new port-forward sends: the same fresh token
                settings = await kube.api_client.configuration.auth_settings()
                assert settings["BearerToken"]["value"] == f"Bearer {issuer.minted[-1]}"
                # written back: the new id-token, the rotated refresh-token, nothing else
                assert path.read_text() == original.replace(first, issuer.minted[-1]).replace(
                    '"r1"', '"r2"')
                assert (path.stat().st_mode & 0o777) == 0o600
                clock.advance(2 * 3600)  # long past: renewed with the rotated refresh-token
                await kube.get_deployment("hello")
                assert issuer.refreshes == 2 and issuer.seen[-1]["refresh_token"] == "r2"
                assert saved_config(path)["refresh-token"] == "r3"
            finally:
                await kube.close()
                await runner.cleanup()

        asyncio.run(main())


def test_without_an_id_token_one_is_fetched_and_added_to_the_file(tmp_path: Path) -> None:
    with Issuer(tmp_path) as issuer:
        config = provider(issuer, "")
        del config["id-token"]
        path = kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", config)
        original = path.read_text()

        async def main() -> str:
            kube = await Kube.connect(str(path))
            await kube.close()
            return str(kube.api_client.configuration.api_key["BearerToken"])

        assert asyncio.run(main()) == f"Bearer {issuer.minted[-1]}"
        assert issuer.refreshes == 1
        assert path.read_text() == original + f"        id-token: {issuer.minted[-1]}\n"


def test_a_401_renews_the_id_token_once(tmp_path: Path) -> None:
    clock = Clock()
    with Issuer(tmp_path, clock) as issuer:
        first = token_at(clock.now, 3600)
        api = Api(clock)

        async def main() -> None:
            runner, server = await serve_get(api.handle)
            path = kubeconfig(tmp_path / "kc", server, provider(issuer, first))
            kube = await Kube.connect(str(path))  # the test clock is the real time here
            try:
                await kube.get_deployment("hello")
                api.revoked.add(first)  # e.g. the signing key was rotated
                await kube.get_deployment("hello")
                assert issuer.refreshes == 1
                assert api.tokens == [first, first, issuer.minted[-1]]
                assert saved_config(path)["id-token"] == issuer.minted[-1]
                assert saved_config(path)["refresh-token"] == "r1"  # not rotated: kept
            finally:
                await kube.close()
                await runner.cleanup()

        asyncio.run(main())


def test_tokens_renewed_by_another_program_are_taken_from_the_file(tmp_path: Path) -> None:
    """kubectl (or a second bridge) renewed and rotated meanwhile: bridge reads the file
    before asking the issuer, and does not spend the old refresh-token."""
    clock = Clock()
    with Issuer(tmp_path, clock) as issuer:
        first = token_at(clock.now, 600)
        path = kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", provider(issuer, first))
        config = oidc.OidcConfig.parse({"name": "oidc", "config": saved_config(path)})
        source = OidcToken(config=config, user="dev", path=str(path), clock=clock)

        async def main() -> None:
            assert await source.token() == first
            clock.advance(590)
            theirs = token_at(clock.now, 3600)
            kubeconfig_edit.persist(str(path), "dev", {"id-token": theirs,
                                                       "refresh-token": "r9"})
            assert await source.token() == theirs
            assert issuer.refreshes == 0 and issuer.discoveries == 0
            issuer.valid_refresh = {"r9"}
            clock.advance(3600)
            assert verify(await source.token(), clock.now)
            assert issuer.seen[-1]["refresh_token"] == "r9"

        asyncio.run(main())


def expired_config(tmp_path: Path, issuer: Issuer, **extra: Any) -> Path:
    stale = token_at(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2), 3600)
    return kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", provider(issuer, stale, **extra))


def connect_error(path: Path) -> str:
    async def main() -> str:
        with pytest.raises(BridgeError) as info:
            await Kube.connect(str(path))
        return str(info.value)

    return asyncio.run(main())


def test_a_refused_refresh_is_one_line_naming_the_issuer_and_status(tmp_path: Path) -> None:
    with Issuer(tmp_path) as issuer:
        issuer.refuse = True
        path = expired_config(tmp_path, issuer)
        before = path.read_text()
        message = connect_error(path)
    assert message.startswith(f"cannot renew the OIDC id-token at {issuer.url}: ")
    assert "400 Bad Request (invalid_grant: Token is not active: ***)" in message
    assert "log in again" in message and "the kubeconfig was not changed" in message
    assert "\n" not in message and "r1" not in message and CLIENT_SECRET not in message
    assert path.read_text() == before


def test_an_unreachable_issuer_is_one_line(tmp_path: Path) -> None:
    with Issuer(tmp_path) as issuer:
        pass  # stopped: nothing listens on its port any more
    path = expired_config(tmp_path, issuer)
    message = connect_error(path)
    assert message.startswith(f"cannot renew the OIDC id-token at {issuer.url}: "
                               "cannot reach the issuer")
    assert "\n" not in message


def test_an_issuer_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    _key, _cert, other_ca = make_ca(tmp_path, "other-ca")
    with Issuer(tmp_path) as issuer:
        path = expired_config(tmp_path, issuer,
                              **{"idp-certificate-authority-data": ca_data(other_ca)})
        message = connect_error(path)
        assert issuer.seen == []  # the refresh-token never left the laptop
    assert "TLS verification failed" in message and "certificate verify failed" in message
    assert "idp-certificate-authority" in message and "\n" not in message


def test_without_a_configured_ca_the_system_cas_are_used_never_no_verification(
        tmp_path: Path) -> None:
    """kubernetes.aio's loader turns verification off when no CA is configured, and would send
    the refresh-token and client secret to whoever answers."""
    with Issuer(tmp_path) as issuer:
        path = expired_config(tmp_path, issuer)
        text = path.read_text().replace(
            f'        idp-certificate-authority-data: "{ca_data(issuer.ca_file)}"\n', "")
        assert text != path.read_text()
        path.write_text(text)
        message = connect_error(path)
        assert issuer.seen == []
    assert "TLS verification failed" in message and "\n" not in message


def test_the_ca_may_be_a_file_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    with Issuer(tmp_path) as issuer:
        path = expired_config(tmp_path, issuer)
        text = path.read_text().replace(
            f'idp-certificate-authority-data: "{ca_data(issuer.ca_file)}"',
            f'idp-certificate-authority: "{issuer.ca_file.name}"')
        path.write_text(text)

        async def main() -> None:
            kube = await Kube.connect(str(path))
            await kube.close()

        asyncio.run(main())
        assert issuer.refreshes == 1
        assert saved_config(path)["id-token"] == issuer.minted[-1]


def test_a_hanging_issuer_is_bounded(tmp_path: Path) -> None:
    with Issuer(tmp_path) as issuer:
        issuer.hang = True
        path = expired_config(tmp_path, issuer)
        config = oidc.OidcConfig.parse({"name": "oidc", "config": saved_config(path)})
        source = OidcToken(config=config, user="dev", path=str(path), bound=1.0)
        with pytest.raises(BridgeError, match=r"the issuer did not answer within 1s"):
            asyncio.run(source.token())


def test_an_expired_token_without_refresh_token_says_log_in_again(tmp_path: Path) -> None:
    with Issuer(tmp_path) as issuer:
        path = expired_config(tmp_path, issuer, **{"refresh-token": ""})
        message = connect_error(path)
        assert issuer.discoveries == 0
    assert "id-token of kubeconfig user dev has expired" in message
    assert "no refresh-token" in message and "log in again" in message


def test_bad_provider_configs_are_one_line() -> None:
    base = {"idp-issuer-url": "https://issuer.example", "client-id": "k"}
    oidc.OidcConfig.parse({"name": "oidc", "config": base})
    for config, words in (({**base, "idp-issuer-url": "http://issuer.example"}, "https URL"),
                          ({"idp-issuer-url": "https://i.example"}, "no client-id"),
                          ({**base, "id-token": "a b"}, "spaces"),
                          ({**base, "idp-certificate-authority-data": "%%"}, "base64")):
        with pytest.raises(BridgeError, match=words):
            oidc.OidcConfig.parse({"name": "oidc", "config": config})


def test_expiry_reads_the_jwt_payload_without_a_signature_check() -> None:
    # a payload whose base64 holds '-' and '_' (urlsafe alphabet), unpadded
    claims = {"exp": 1767225600, "iat": 1767222000, "sub": "\u00ff\u00fe>>>???"}
    token = f"x.{b64url(json.dumps(claims).encode())}.not-a-signature"
    assert "-" in token.split(".")[1] or "_" in token.split(".")[1]
    exp, iat = oidc.expiry(token)
    assert exp == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert iat == dt.datetime(2025, 12, 31, 23, tzinfo=dt.UTC)
    with pytest.raises(ValueError):
        oidc.expiry("only.two")


def test_writing_back_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    text = ("# mine\nusers:\n- name: dev  # me\n  user:\n    auth-provider:\n"
            "      name: oidc\n      config: \n        client-id: k\n"
            "        id-token: 'old'   # note\n")
    out = kubeconfig_edit.set_provider_values(text, "dev", {"id-token": "eyJ.new",
                                                            "refresh-token": "r 2"})
    assert out == text.replace("'old'", "'eyJ.new'") + '        refresh-token: "r 2"\n'
    flow = "users: [{name: dev, user: {auth-provider: {name: oidc, config: {id-token: a}}}}]\n"
    out = kubeconfig_edit.set_provider_values(flow, "dev", {"refresh-token": "b"})
    assert yaml.safe_load(out)["users"][0]["user"]["auth-provider"]["config"] == {
        "id-token": "a", "refresh-token": "b"}
    with pytest.raises(ValueError):
        kubeconfig_edit.set_provider_values(text, "nobody", {"id-token": "x"})


def test_writing_back_follows_a_symlink_and_honours_kubectls_lock(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "config"
    real.parent.mkdir()
    real.write_text("users:\n- name: dev\n  user:\n    auth-provider:\n      name: oidc\n"
                    "      config:\n        id-token: a\n")
    link = tmp_path / "config"
    link.symlink_to(real)
    assert kubeconfig_edit.persist(str(link), "dev", {"id-token": "b"})
    assert link.is_symlink() and "id-token: b" in real.read_text()
    Path(f"{link}.lock").write_text("")  # kubectl is writing
    with pytest.raises(OSError, match="lock"):
        with kubeconfig_edit.locked(str(link), wait=0.1):
            pass
    assert os.path.exists(f"{link}.lock")  # not ours to remove


def test_a_kubeconfig_that_cannot_be_written_warns_and_goes_on(tmp_path: Path) -> None:
    clock = Clock()
    with Issuer(tmp_path, clock) as issuer:
        path = expired_config(tmp_path, issuer)
        config = oidc.OidcConfig.parse({"name": "oidc", "config": saved_config(path)})
        warnings: list[str] = []
        source = OidcToken(config=config, user="dev", path=str(path), clock=clock,
                           warn=warnings.append)
        Path(f"{path}.lock").write_text("")
        try:
            token = asyncio.run(source.token())
        finally:
            os.unlink(f"{path}.lock")
        assert token == issuer.minted[-1]
        assert len(warnings) == 1 and f"could not write the renewed OIDC tokens to {path}" \
            in warnings[0] and token not in warnings[0]


def test_doctor_says_the_token_comes_from_the_oidc_issuer(tmp_path: Path) -> None:
    from bridge.doctor import credentials_note

    clock = Clock()
    with Issuer(tmp_path, clock) as issuer:
        first = token_at(dt.datetime(2026, 1, 1, 11, 15, tzinfo=dt.UTC), 3600)
        path = kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", provider(issuer, first))
        config = oidc.OidcConfig.parse({"name": "oidc", "config": saved_config(path)})
        source = OidcToken(config=config, user="dev", path=str(path),
                           clock=lambda: dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC))

        class Configuration:
            pass

        configuration = Configuration()
        asyncio.run(source.current())
        source.install(configuration)
        assert credentials_note(configuration) == (
            f"token from oidc auth-provider (issuer {issuer.url}), valid until 12:15:00 UTC; "
            "renewed at the issuer before then and after a 401")
