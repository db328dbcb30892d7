"""Exec-plugin credentials: a real plugin (a script) minting signed tokens that expire, checked by
a small API server that refuses expired ones, through `Kube` as bridge builds it."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import io
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from bridge.errors import BridgeError
from bridge.kube import credentials
from bridge.kube.client import ApiError, Kube
from bridge.kube.credentials import ExecPlugin, TokenSource, parse_output, run_plugin
from tests.unit.support import serve_get

SECRET = "s3cret"
V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"

# Mints "<expiry unix>.<n>.<hmac>" valid LIFETIME seconds from the clock in CLOCK_FILE (the
# test's clock), counts its runs in RUNS_FILE, records KUBERNETES_EXEC_INFO.
PLUGIN = textwrap.dedent('''\
    import datetime, hashlib, hmac, json, os, sys
    runs = os.environ["RUNS_FILE"]
    n = (int(open(runs).read()) if os.path.exists(runs) else 0) + 1
    open(runs, "w").write(str(n))
    open(os.environ["INFO_FILE"], "w").write(os.environ.get("KUBERNETES_EXEC_INFO", ""))
    mode = os.environ.get("PLUGIN_MODE", "")
    if mode == "fail":
        print("error: device code expired, run kubelogin again", file=sys.stderr)
        sys.exit(3)
    if mode == "cert":
        print(json.dumps({"apiVersion": os.environ["API_VERSION"], "kind": "ExecCredential",
                          "status": {"clientCertificateData": open(os.environ["CERT"]).read(),
                                     "clientKeyData": open(os.environ["KEY"]).read()}}))
        sys.exit(0)
    if mode == "hang":
        print("open https://login.example/device and enter ABCD-EFGH", file=sys.stderr)
        sys.stderr.flush()
        import time; time.sleep(600)
    now = float(open(os.environ["CLOCK_FILE"]).read())
    exp = int(now) + int(os.environ["LIFETIME"])
    body = f"{exp}.{n}"
    sig = hmac.new(os.environ["SECRET"].encode(), body.encode(), hashlib.sha256).hexdigest()
    stamp = datetime.datetime.fromtimestamp(exp, datetime.timezone.utc)
    print(json.dumps({"apiVersion": os.environ["API_VERSION"], "kind": "ExecCredential",
                      "status": {"token": f"{body}.{sig}",
                                 "expirationTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
''')


class Clock:
    """The test's clock, shared with the plugin (a file) and the server."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
        self.write()

    def write(self) -> None:
        self.path.write_text(str(self.now.timestamp()))

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)
        self.write()

    def __call__(self) -> dt.datetime:
        return self.now


class Setup:
    def __init__(self, tmp: Path, api_version: str = V1, mode: str = "",
                 **exec_extra: Any) -> None:
        self.tmp = tmp
        self.clock = Clock(tmp / "clock")
        self.runs = tmp / "runs"
        self.info = tmp / "info"
        script = tmp / "plugins" / "mint-token"
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"#!{sys.executable}\n" + PLUGIN)
        script.chmod(0o755)
        self.exec: dict[str, Any] = {
            "apiVersion": api_version, "command": "./plugins/mint-token",
            "env": [{"name": "RUNS_FILE", "value": str(self.runs)},
                    {"name": "INFO_FILE", "value": str(self.info)},
                    {"name": "CLOCK_FILE", "value": str(self.clock.path)},
                    {"name": "LIFETIME", "value": "900"},
                    {"name": "SECRET", "value": SECRET},
                    {"name": "API_VERSION", "value": api_version},
                    {"name": "PLUGIN_MODE", "value": mode}],
            "interactiveMode": "Never", **exec_extra}

    def kubeconfig(self, server: str) -> str:
        path = self.tmp / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "eks",
            "clusters": [{"name": "k", "cluster": {
                "server": server, "tls-server-name": "api.example",
                "extensions": [{"name": "client.authentication.k8s.io/exec",
                                "extension": {"audience": "bridge-test"}}]}}],
            "users": [{"name": "u", "user": {"exec": self.exec}}],
            "contexts": [{"name": "eks", "context": {"cluster": "k", "user": "u"}}]}))
        return str(path)

    def plugin_runs(self) -> int:
        return int(self.runs.read_text()) if self.runs.exists() else 0


class Api:
    """Accepts only tokens signed with SECRET whose expiry is after the test clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.revoked: set[str] = set()
        self.tokens: list[str] = []

    def valid(self, header: str) -> bool:
        token = header.removeprefix("Bearer ")
        exp, n, sig = (token.split(".") + ["", "", ""])[:3]
        good = hmac.new(SECRET.encode(), f"{exp}.{n}".encode(), hashlib.sha256).hexdigest()
        return (hmac.compare_digest(sig, good) and exp.isdigit()
                and int(exp) > self.clock.now.timestamp() and token not in self.revoked)

    async def handle(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        self.tokens.append(header.removeprefix("Bearer "))
        if not self.valid(header):
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized",
                                      "message": "Unauthorized"}, status=401)
        return web.json_response({"kind": "Deployment", "metadata": {"name": "hello"}})


async def connect(setup: Setup, api: Api) -> tuple[Kube, web.AppRunner]:
    runner, server = await serve_get(api.handle)
    kube = await Kube.connect(setup.kubeconfig(server))
    source = credentials.installed(kube.api_client.configuration)
    assert source is not None
    source.clock = setup.clock
    return kube, runner


def test_token_refreshed_before_it_expires_for_every_call(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    api = Api(setup.clock)

    async def main() -> None:
        kube, runner = await connect(setup, api)
        try:
            await kube.get_deployment("hello")
            assert setup.plugin_runs() == 1
            setup.clock.advance(600)  # 5 of 15 minutes left: the cached token is used
            await kube.get_deployment("hello")
            assert setup.plugin_runs() == 1
            setup.clock.advance(290)  # 10 s left: inside the margin, a new token first
            await kube.get_deployment("hello")
            assert setup.plugin_runs() == 2
            setup.clock.advance(3 * 900)  # long past any token: still fine
            await kube.get_deployment("hello")
            assert setup.plugin_runs() == 3
            # what a new port-forward sends: the same fresh token
            settings = await kube.api_client.configuration.auth_settings()
            assert settings["BearerToken"]["value"] == f"Bearer {api.tokens[-1]}"
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(main())
    assert len(set(api.tokens)) == 3


def test_a_token_shorter_lived_than_the_margin_is_reused_for_most_of_its_life(
        tmp_path: Path) -> None:
    """A 30 s token (the real cluster's expiring context): used for its first three quarters,
    not re-minted before every call as a fixed 60 s margin would."""
    setup = Setup(tmp_path)
    for item in setup.exec["env"]:
        if item["name"] == "LIFETIME":
            item["value"] = "30"
    api = Api(setup.clock)

    async def main() -> None:
        kube, runner = await connect(setup, api)
        source = credentials.installed(kube.api_client.configuration)
        assert source is not None
        source.invalidate()  # the first run was on the real clock: a token on the test's
        try:
            await kube.get_deployment("hello")
            assert setup.plugin_runs() == 2
            for _ in range(4):
                setup.clock.advance(5)  # 20 s into its 30: still this token
                await kube.get_deployment("hello")
            assert setup.plugin_runs() == 2
            setup.clock.advance(3)  # 7 s left, inside its last quarter: a new one first
            await kube.get_deployment("hello")
            assert setup.plugin_runs() == 3
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(main())
    assert len(set(api.tokens)) == 2  # the first token was never sent


def test_a_401_runs_the_plugin_again_once(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    api = Api(setup.clock)

    async def main() -> None:
        kube, runner = await connect(setup, api)
        try:
            await kube.get_deployment("hello")
            api.revoked.add(api.tokens[-1])  # e.g. the IAM session was rotated
            await kube.get_deployment("hello")
            assert setup.plugin_runs() == 2
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(main())


def test_without_a_plugin_the_401_stands(tmp_path: Path) -> None:
    clock = Clock(tmp_path / "clock")
    api = Api(clock)

    async def main() -> None:
        runner, server = await serve_get(api.handle)
        path = tmp_path / "kc"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {"token": "static"}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
        kube = await Kube.connect(str(path))
        try:
            with pytest.raises(ApiError) as info:
                await kube.get_deployment("hello")
            assert info.value.status == 401
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(main())


def test_exec_info_and_cluster_info(tmp_path: Path) -> None:
    setup = Setup(tmp_path, api_version=V1BETA1, provideClusterInfo=True)
    del setup.exec["interactiveMode"]  # optional in v1beta1
    api = Api(setup.clock)

    async def main() -> None:
        kube, runner = await connect(setup, api)
        await kube.close()
        await runner.cleanup()

    asyncio.run(main())
    info = json.loads(setup.info.read_text())
    assert info["apiVersion"] == V1BETA1 and info["kind"] == "ExecCredential"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"].startswith("http://127.0.0.1:")
    assert info["spec"]["cluster"]["tls-server-name"] == "api.example"
    assert info["spec"]["cluster"]["config"] == {"audience": "bridge-test"}


def test_failing_plugin_is_one_line_with_its_stderr(tmp_path: Path) -> None:
    setup = Setup(tmp_path, mode="fail")

    async def main() -> None:
        with pytest.raises(BridgeError) as info:
            await Kube.connect(setup.kubeconfig("http://127.0.0.1:1"))
        message = str(info.value)
        assert "credential plugin mint-token failed (exit 3)" in message
        assert "device code expired" in message and "nothing was changed" in message
        assert "\n" not in message

    asyncio.run(main())


def test_hanging_plugin_is_bounded_and_its_prompt_shown(tmp_path: Path) -> None:
    setup = Setup(tmp_path, mode="hang")
    plugin = ExecPlugin.parse(setup.exec, str(tmp_path))
    shown = io.StringIO()

    async def main() -> None:
        with pytest.raises(BridgeError) as info:
            await run_plugin(plugin, terminal=False, bound=1.0, stderr_to=shown)
        assert "did not answer within 1s" in str(info.value)
        assert "login.example/device" in str(info.value)

    asyncio.run(main())
    assert "ABCD-EFGH" in shown.getvalue()


def test_plugin_not_found_names_the_install_hint(tmp_path: Path) -> None:
    plugin = ExecPlugin.parse({"apiVersion": V1, "command": "no-such-plugin-xyz",
                               "interactiveMode": "Never",
                               "installHint": "install it with: brew install xyz"})
    with pytest.raises(BridgeError, match="not found on PATH.*brew install xyz"):
        asyncio.run(run_plugin(plugin, terminal=False))


def test_interactive_modes() -> None:
    base = {"apiVersion": V1, "command": "x"}
    with pytest.raises(BridgeError, match="must set interactiveMode"):
        ExecPlugin.parse(base)
    always = ExecPlugin.parse({**base, "interactiveMode": "Always"})
    with pytest.raises(BridgeError, match="needs an interactive terminal"):
        always.interactive(terminal=False)
    assert always.interactive(terminal=True)
    assert not ExecPlugin.parse({**base, "interactiveMode": "Never"}).interactive(True)
    assert ExecPlugin.parse({**base, "interactiveMode": "IfAvailable"}).interactive(True)
    with pytest.raises(BridgeError, match="apiVersion"):
        ExecPlugin.parse({"apiVersion": "client.authentication.k8s.io/v1alpha1",
                          "command": "x"})
    with pytest.raises(BridgeError, match="env"):
        ExecPlugin.parse({**base, "interactiveMode": "Never", "env": [{"name": "A"}]})


def test_parse_output_validates_what_goes_into_a_header() -> None:
    plugin = ExecPlugin("p", api_version=V1)

    def out(status: dict[str, Any], api: str = V1) -> bytes:
        return json.dumps({"apiVersion": api, "kind": "ExecCredential",
                           "status": status}).encode()

    c = parse_output(plugin, out({"token": "abc", "expirationTimestamp":
                                  "2026-01-01T12:15:00Z"}))
    assert c.token == "abc" and c.expires == dt.datetime(2026, 1, 1, 12, 15, tzinfo=dt.UTC)
    assert parse_output(plugin, out({"token": "abc"})).expires is None
    for bad in (out({"token": "a\r\nX-Evil: 1"}), out({"token": "abc"}, V1BETA1),
                out({"expirationTimestamp": "soon", "token": "a"}), out({}), b"nope"):
        with pytest.raises(BridgeError, match="cannot use"):
            parse_output(plugin, bad)
    cert = parse_output(plugin, out({"clientCertificateData": "C", "clientKeyData": "K"}))
    assert cert.client_certificate == "C" and not cert.token


def test_token_source_refreshes_on_invalidate(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    source = TokenSource(ExecPlugin.parse(setup.exec, str(tmp_path)), clock=setup.clock,
                         terminal=False)

    async def main() -> None:
        first = await source.token()
        assert await source.token() == first
        source.invalidate()
        assert await source.token() != first

    asyncio.run(main())
    assert source.runs == 2


def test_plugin_giving_a_client_certificate_is_left_to_the_loader(tmp_path: Path) -> None:
    from tests.unit.support import Pki

    pki = Pki.create(tmp_path)
    setup = Setup(tmp_path, mode="cert")
    setup.exec["env"] += [{"name": "CERT", "value": pki.client_cert_file},
                          {"name": "KEY", "value": pki.client_key_file}]

    async def main() -> str:
        kube = await Kube.connect(setup.kubeconfig("https://127.0.0.1:1"))
        try:
            config = kube.api_client.configuration
            assert credentials.installed(config) is None
            return str(config.cert_file)
        finally:
            await kube.close()

    cert_file = asyncio.run(main())
    assert Path(cert_file).read_text() == Path(pki.client_cert_file).read_text()


def test_doctor_says_where_the_token_comes_from(tmp_path: Path) -> None:
    from bridge.doctor import credentials_note

    setup = Setup(tmp_path)
    api = Api(setup.clock)

    async def main() -> str:
        kube, runner = await connect(setup, api)
        try:
            return credentials_note(kube.api_client.configuration)
        finally:
            await kube.close()
            await runner.cleanup()

    assert asyncio.run(main()) == ("token from exec plugin mint-token, valid until 12:15:00 UTC; "
                                   "renewed before then and after a 401")
