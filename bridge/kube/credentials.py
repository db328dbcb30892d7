"""Credentials that expire: kubeconfig exec plugins and oidc auth-providers, kept fresh.

`kubernetes.aio`'s kubeconfig loader runs an exec plugin (aws eks get-token,
gke-gcloud-auth-plugin, kubelogin...) once, without a time limit, hides its errors in a log
line, and installs nothing to refresh the token: an EKS token dies after ~15 minutes, and with
it every later API call of a session (heartbeat, reconnect, restore). Here:

- `ExecPlugin` is the kubeconfig's `user.exec` block, validated (client.authentication.k8s.io
  v1 and v1beta1: command, args, env, interactiveMode, provideClusterInfo, installHint).
- `run_plugin` runs it as client-go does (KUBERNETES_EXEC_INFO with spec.interactive and, when
  asked, spec.cluster) with a bounded wait; a plugin that fails, hangs or prompts without a
  terminal ends with a one-line error carrying the tail of its stderr. With a terminal, its
  stderr (device-code prompts) is shown as it comes and stdin is passed through.
- `TokenSource` caches the token until shortly before its `expirationTimestamp` and after a
  401 (`invalidate`). Installed as the Configuration's `refresh_api_key_hook`, it is asked
  before every REST call and every new port-forward.
- `load_configuration` replaces `load_kube_config`: the plugin runs once here (bounded), and
  the loader is handed the resulting token instead of the exec block.

A client certificate from a plugin is handed to the loader as kubeconfig data and is not
refreshed (rare: plugins for long sessions give tokens).

The same caching serves a user with an `auth-provider: {name: oidc}` (`OidcToken`): its
id-token is used until shortly before the JWT's `exp` (the margin logic above, `iat` giving the
lifetime), then renewed at the issuer with the refresh-token (bridge/kube/oidc.py) and written back
to the kubeconfig file (bridge/kube/kubeconfig_edit.py). Before asking the issuer the file is read
again: tokens another kubectl or bridge renewed meanwhile are taken as they are. `RenewedToken`
is what both share and what `installed` returns.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.errors import BridgeError
from bridge.kube import kubeconfig_edit, oidc

API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")
PLUGIN_TIMEOUT = 60.0  # seconds for a plugin run without a terminal
INTERACTIVE_TIMEOUT = 300.0  # ...and with one (a browser or device-code login)
REFRESH_MARGIN = dt.timedelta(seconds=60)  # refresh this long before a token expires...
MARGIN_SHARE = 0.25  # ...or, for a token that lives under 4 margins, in its last quarter
STDERR_TAIL = 10  # lines of the plugin's stderr kept for an error message
CLUSTER_INFO_KEY = "client.authentication.k8s.io/exec"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class ExecPlugin:
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = API_VERSIONS[0]
    interactive_mode: str = "IfAvailable"
    provide_cluster_info: bool = False
    install_hint: str = ""

    @property
    def name(self) -> str:
        return Path(self.command).name or self.command

    @classmethod
    def parse(cls, exec_block: Any, base_dir: str | None = None) -> ExecPlugin:
        """From a kubeconfig `user.exec`; a relative command with a slash is resolved against
        the kubeconfig's directory, as client-go does."""
        if not isinstance(exec_block, Mapping):
            raise BridgeError("the kubeconfig user's exec entry is not a mapping; "
                              "nothing was changed")
        command = exec_block.get("command")
        api_version = exec_block.get("apiVersion")
        if not isinstance(command, str) or not command:
            raise BridgeError("the kubeconfig's exec plugin has no command; nothing was changed")
        if api_version not in API_VERSIONS:
            raise BridgeError(f"the kubeconfig's exec plugin {command} uses apiVersion "
                              f"{api_version!r}; bridge supports {', '.join(API_VERSIONS)}; "
                              "nothing was changed")
        if base_dir and os.sep in command and not os.path.isabs(command):
            command = os.path.normpath(os.path.join(base_dir, command))
        args = exec_block.get("args") or []
        env = exec_block.get("env") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise BridgeError(f"the exec plugin {command}'s args are not a list of strings; "
                              "nothing was changed")
        pairs: list[tuple[str, str]] = []
        for item in env if isinstance(env, list) else [None]:
            if (not isinstance(item, Mapping) or not isinstance(item.get("name"), str)
                    or not isinstance(item.get("value"), str)):
                raise BridgeError(f"the exec plugin {command}'s env must list name/value "
                                  "strings; nothing was changed")
            pairs.append((item["name"], item["value"]))
        mode = exec_block.get("interactiveMode")
        if mode is None:
            if api_version.endswith("/v1"):
                raise BridgeError(f"the exec plugin {command} (apiVersion v1) must set "
                                  "interactiveMode; nothing was changed")
            mode = "IfAvailable"
        if mode not in INTERACTIVE_MODES:
            raise BridgeError(f"the exec plugin {command} has interactiveMode {mode!r} "
                              f"(expected one of {', '.join(INTERACTIVE_MODES)}); "
                              "nothing was changed")
        hint = exec_block.get("installHint")
        return cls(command, tuple(args), tuple(pairs), api_version, mode,
                   exec_block.get("provideClusterInfo") is True,
                   hint.strip() if isinstance(hint, str) else "")

    def interactive(self, terminal: bool) -> bool:
        """Whether this run is interactive; raises when the plugin insists and cannot be."""
        if self.interactive_mode == "Never":
            return False
        if self.interactive_mode == "Always" and not terminal:
            raise BridgeError(f"the credential plugin {self.name} needs an interactive terminal "
                              "(interactiveMode: Always); run bridge from one; "
                              "nothing was changed")
        return terminal


def cluster_info(cluster: Mapping[str, Any], base_dir: str | None = None) -> dict[str, Any]:
    """spec.cluster of KUBERNETES_EXEC_INFO from a kubeconfig `cluster` entry."""
    info: dict[str, Any] = {"server": str(cluster.get("server") or "")}
    if cluster.get("tls-server-name"):
        info["tls-server-name"] = str(cluster["tls-server-name"])
    if cluster.get("insecure-skip-tls-verify") is True:
        info["insecure-skip-tls-verify"] = True
    ca = cluster.get("certificate-authority-data")
    if isinstance(ca, str) and ca:
        info["certificate-authority-data"] = ca
    elif isinstance(cluster.get("certificate-authority"), str):
        path = Path(cluster["certificate-authority"]).expanduser()
        if base_dir and not path.is_absolute():
            path = Path(base_dir) / path
        with contextlib.suppress(OSError):
            info["certificate-authority-data"] = base64.b64encode(path.read_bytes()).decode()
    if cluster.get("proxy-url"):
        info["proxy-url"] = str(cluster["proxy-url"])
    for ext in cluster.get("extensions") or []:
        if isinstance(ext, Mapping) and ext.get("name") == CLUSTER_INFO_KEY:
            info["config"] = ext.get("extension")
    return info


def exec_info(plugin: ExecPlugin, interactive: bool,
              cluster: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ExecCredential passed to the plugin in KUBERNETES_EXEC_INFO."""
    spec: dict[str, Any] = {"interactive": interactive}
    if plugin.provide_cluster_info and cluster is not None:
        spec["cluster"] = dict(cluster)
    return {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": spec}


@dataclass(frozen=True)
class Credential:
    token: str = ""
    client_certificate: str = ""
    client_key: str = ""
    expires: dt.datetime | None = None
    obtained: dt.datetime | None = None  # when the plugin was asked for it

    def fresh(self, now: dt.datetime, margin: dt.timedelta = REFRESH_MARGIN) -> bool:
        """Usable for a while yet. The margin shrinks for short-lived tokens: a token living
        less than the margin would otherwise be stale from birth, the plugin run before every
        API call."""
        if self.expires is None:
            return True
        lifetime = self.expires - self.obtained if self.obtained is not None else None
        if lifetime is not None and lifetime > dt.timedelta(0):
            margin = min(margin, lifetime * MARGIN_SHARE)
        return now + margin < self.expires


def parse_timestamp(value: str) -> dt.datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def parse_output(plugin: ExecPlugin, stdout: bytes) -> Credential:
    """The plugin's ExecCredential answer; every field checked (a token goes into a header)."""
    def bad(why: str) -> BridgeError:
        return BridgeError(f"the credential plugin {plugin.name} answered something bridge "
                           f"cannot use: {why}; nothing was changed")
    try:
        data = json.loads(stdout)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != "ExecCredential":
        raise bad("not an ExecCredential")
    if data.get("apiVersion") != plugin.api_version:
        raise bad(f"apiVersion {data.get('apiVersion')!r}, expected {plugin.api_version}")
    status = data.get("status")
    if not isinstance(status, dict):
        raise bad("no status")
    expires = None
    if status.get("expirationTimestamp") is not None:
        try:
            expires = parse_timestamp(str(status["expirationTimestamp"]))
        except ValueError:
            raise bad("expirationTimestamp is not a timestamp") from None
    token = status.get("token")
    if isinstance(token, str) and token:
        if not token.isprintable() or any(ch.isspace() for ch in token):
            raise bad("the token holds spaces or control characters")
        return Credential(token=token, expires=expires)
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    if isinstance(cert, str) and cert and isinstance(key, str) and key:
        return Credential(client_certificate=cert, client_key=key, expires=expires)
    raise bad("neither a token nor clientCertificateData and clientKeyData")


async def run_plugin(plugin: ExecPlugin, cluster: Mapping[str, Any] | None = None, *,
                     terminal: bool | None = None, bound: float | None = None,
                     stderr_to: Any = None) -> Credential:
    """Run the plugin once, for at most `bound` seconds (default by interactivity), and read
    its credential."""
    timeout = bound
    if terminal is None:
        terminal = sys.stdin.isatty()
    interactive = plugin.interactive(terminal)
    if timeout is None:
        timeout = INTERACTIVE_TIMEOUT if interactive else PLUGIN_TIMEOUT
    env = dict(os.environ)
    env.update(dict(plugin.env))
    env["KUBERNETES_EXEC_INFO"] = json.dumps(exec_info(plugin, interactive, cluster))
    hint = f" ({plugin.install_hint})" if plugin.install_hint else ""
    if os.sep not in plugin.command and shutil.which(plugin.command, path=env.get("PATH")) is None:
        raise BridgeError(f"the credential plugin {plugin.command} was not found on PATH"
                          f"{hint}; nothing was changed")
    try:
        proc = await asyncio.create_subprocess_exec(
            plugin.command, *plugin.args, env=env,
            stdin=None if interactive else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        raise BridgeError(f"cannot run the credential plugin {plugin.command}: "
                          f"{e.strerror or e}{hint}; nothing was changed") from None
    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=STDERR_TAIL)
    echo = stderr_to if stderr_to is not None else (sys.stderr if interactive else None)

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                tail.append(text)
            if echo is not None:
                echo.write(line.decode("utf-8", "replace"))
                echo.flush()

    async def communicate() -> tuple[bytes, int]:
        assert proc.stdout is not None and proc.stderr is not None
        err_task = asyncio.ensure_future(read_stderr(proc.stderr))
        out = await proc.stdout.read()
        await err_task
        return out, await proc.wait()

    def said() -> str:
        words = " | ".join(" ".join(t.split()) for t in tail)[-600:]
        return f"; it said: {words}" if words else ""

    try:
        async with asyncio.timeout(timeout):
            out, code = await communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        waiting = " (it may be waiting for a login)" if interactive or tail else ""
        raise BridgeError(f"the credential plugin {plugin.name} did not answer within "
                          f"{timeout:g}s{waiting}{said()}; nothing was changed") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if code != 0:
        raise BridgeError(f"the credential plugin {plugin.name} failed (exit {code}){said()}"
                          f"{hint}; nothing was changed")
    return parse_output(plugin, out)


@dataclass(kw_only=True)
class RenewedToken:
    """A bearer token that expires, renewed before then and after a 401 (`invalidate`).
    Subclasses say how to get one (`obtain`) and where it comes from (`origin`)."""

    margin: dt.timedelta = REFRESH_MARGIN
    clock: Callable[[], dt.datetime] = utcnow
    credential: Credential | None = None
    runs: int = 0
    _stale: bool = field(default=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def origin(self) -> str:  # for `bridge doctor`: "token from <origin>"
        raise NotImplementedError

    @property
    def renewal(self) -> str:
        return "renewed before then and after a 401"

    async def obtain(self) -> Credential:
        raise NotImplementedError

    def needs_refresh(self) -> bool:
        c = self.credential
        return c is None or self._stale or not c.fresh(self.clock(), self.margin)

    async def current(self) -> Credential:
        """The credential, obtained again first when it is due."""
        async with self._lock:
            if self.needs_refresh():
                asked = self.clock()
                got = await self.obtain()
                self.credential = got if got.obtained is not None else dataclasses.replace(
                    got, obtained=asked)
                self.runs += 1
                self._stale = False
            assert self.credential is not None
            return self.credential

    async def token(self) -> str:
        credential = await self.current()
        if not credential.token:
            raise BridgeError(f"the {self.origin} gave a client certificate, which bridge "
                              "cannot refresh; its token support is needed for long sessions")
        return credential.token

    def invalidate(self) -> None:
        """The server refused the token (401): obtain a new one next time."""
        self._stale = True

    async def hook(self, configuration: Any) -> None:
        """A Configuration's `refresh_api_key_hook`: the current token into its api_key."""
        configuration.api_key["BearerToken"] = f"Bearer {await self.token()}"
        configuration.api_key_prefix.pop("BearerToken", None)

    def install(self, configuration: Any) -> None:
        configuration.refresh_api_key_hook = self.hook
        configuration.bridge_credentials = self


@dataclass
class TokenSource(RenewedToken):
    """A bearer token from an exec plugin."""

    plugin: ExecPlugin
    cluster: Mapping[str, Any] | None = None
    terminal: bool | None = None
    bound: float | None = None  # seconds for one plugin run (None: run_plugin's default)

    @property
    def origin(self) -> str:
        return f"exec plugin {self.plugin.name}"

    async def obtain(self) -> Credential:
        return await run_plugin(self.plugin, self.cluster, terminal=self.terminal,
                                bound=self.bound)


@dataclass
class OidcToken(RenewedToken):
    """The id-token of the kubeconfig's oidc auth-provider, renewed at its issuer with the
    refresh-token; the new tokens are written back to the kubeconfig file the user is in."""

    config: oidc.OidcConfig
    user: str = ""  # the kubeconfig user's name
    path: str | None = None  # the file it came from (None: nothing is written back)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    bound: float = oidc.REFRESH_TIMEOUT
    warn: Callable[[str], None] = field(default=lambda line: warn_stderr(line), repr=False)
    refreshes: int = 0  # new id-tokens obtained from the issuer
    refresh_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.refresh_token = self.refresh_token or self.config.refresh_token

    @property
    def origin(self) -> str:
        return f"oidc auth-provider (issuer {self.config.issuer})"

    @property
    def renewal(self) -> str:
        if not self.refresh_token:
            return "not renewable (no refresh-token): log in again by then"
        return "renewed at the issuer before then and after a 401"

    def _credential(self, token: str) -> Credential:
        try:
            expires, issued = oidc.expiry(token)
        except ValueError as e:
            raise BridgeError(f"the id-token of the kubeconfig's oidc user {self.user} is not "
                              f"usable ({e}); {oidc.LOGIN_AGAIN}") from None
        return Credential(token=token, expires=expires, obtained=issued)

    def _on_disk(self) -> dict[str, Any]:
        """The user's provider config as the file holds it now (another kubectl or bridge
        may have renewed the tokens meanwhile); {} when it cannot be read."""
        if not self.path:
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                return kubeconfig_edit.provider_config(f.read(), self.user)
        except (OSError, ValueError, UnicodeDecodeError, AttributeError, yaml.YAMLError):
            return {}

    def _persist(self, values: dict[str, str]) -> None:
        if not self.path:
            return
        try:
            kubeconfig_edit.persist(self.path, self.user, values)
        except (OSError, ValueError, UnicodeDecodeError, AttributeError, yaml.YAMLError) as e:
            kept = " (the issuer rotated the refresh-token: kubectl will need a new login)" \
                if "refresh-token" in values else ""
            self.warn(f"could not write the renewed OIDC tokens to {self.path}: {e}; bridge "
                      f"goes on with them in memory{kept}")

    async def obtain(self) -> Credential:
        ours = self.credential.token if self.credential else self.config.id_token
        if self.credential is None and self.config.id_token:
            first = self._credential(self.config.id_token)
            if first.fresh(self.clock(), self.margin):
                return first  # still valid: the issuer is not asked
        disk = await asyncio.to_thread(self._on_disk)
        token, rotated = disk.get("id-token"), disk.get("refresh-token")
        if isinstance(rotated, str) and rotated and rotated.isprintable() and not any(
                ch.isspace() for ch in rotated):
            self.refresh_token = rotated
        if isinstance(token, str) and token and token != ours:
            with contextlib.suppress(BridgeError):
                newer = self._credential(token)
                if newer.fresh(self.clock(), self.margin):
                    return newer  # renewed by someone else meanwhile
        if not self.refresh_token:
            why = "was refused" if self._stale else "has expired"
            raise BridgeError(f"the OIDC id-token of kubeconfig user {self.user} {why} and "
                              f"there is no refresh-token to renew it at {self.config.issuer}; "
                              f"{oidc.LOGIN_AGAIN}")
        tokens = await oidc.refresh(self.config, self.refresh_token, env=self.env,
                                    bound=self.bound)
        self.refreshes += 1
        values = {"id-token": tokens.id_token}
        if tokens.refresh_token != self.refresh_token:
            values["refresh-token"] = tokens.refresh_token
        self.refresh_token = tokens.refresh_token
        await asyncio.to_thread(self._persist, values)
        return self._credential(tokens.id_token)


def warn_stderr(line: str) -> None:
    sys.stderr.write(f"bridge: warning: {line}\n")
    sys.stderr.flush()


def installed(configuration: Any) -> RenewedToken | None:
    """The renewed token (exec plugin or OIDC) installed on this Configuration, if any."""
    source = getattr(configuration, "bridge_credentials", None)
    return source if isinstance(source, RenewedToken) else None


@dataclass
class ContextUser:
    name: str
    user: dict[str, Any]  # the raw dict inside the merged config (the loader reads it)
    path: str | None  # the file the user entry came from
    cluster: dict[str, Any]
    cluster_path: str | None


def context_user(merged: Any, context: str) -> ContextUser | None:
    """The context's user from a KubeConfigMerger's merged config; None when there is none
    (the loader says what is wrong with the file)."""
    try:
        ctx = merged["contexts"].get_with_name(context)["context"]
        user_name = ctx.safe_get("user")
        if not user_name or not merged.safe_get("users"):
            return None
        user_node = merged["users"].get_with_name(user_name, safe=True)
        cluster_node = merged["clusters"].get_with_name(ctx["cluster"])
    except Exception:  # noqa: BLE001 - the loader says what is wrong with the file
        return None
    if user_node is None or not isinstance(user_node["user"].value, dict):
        return None
    return ContextUser(str(user_name), user_node["user"].value, user_node.path,
                       cluster_node["cluster"].value, cluster_node.path)


def _base(path: str | None) -> str | None:
    return os.path.dirname(os.path.abspath(path)) if path else None


def exec_user(merged: Any, context: str) -> tuple[dict[str, Any], ExecPlugin,
                                                  dict[str, Any] | None] | None:
    """(the user's raw dict, its exec plugin, spec.cluster if the plugin wants it) when the
    context's user has an exec block, from a KubeConfigMerger's merged config."""
    found = context_user(merged, context)
    if found is None or "exec" not in found.user:
        return None
    plugin = ExecPlugin.parse(found.user["exec"], _base(found.path))
    cluster = None
    if plugin.provide_cluster_info:
        cluster = cluster_info(found.cluster, _base(found.cluster_path))
    return found.user, plugin, cluster


def oidc_user(merged: Any, context: str, **options: Any) -> tuple[dict[str, Any],
                                                                    OidcToken] | None:
    """(the user's raw dict, its OidcToken) when the context's user has an oidc
    auth-provider."""
    found = context_user(merged, context)
    if found is None:
        return None
    provider = found.user.get("auth-provider")
    if not isinstance(provider, Mapping) or provider.get("name") != oidc.PROVIDER:
        return None
    config = oidc.OidcConfig.parse(provider, _base(found.path))
    return found.user, OidcToken(config=config, user=found.name, path=found.path, **options)


async def load_configuration(paths: str, context: str, configuration: Any,
                             **source_options: Any) -> RenewedToken | None:
    """Load `context` from the kubeconfig files into `configuration` (as load_kube_config
    does), with an exec plugin run here (bounded) or an oidc id-token checked (and renewed
    when due), either kept fresh by the installed RenewedToken."""
    from kubernetes.aio.config.kube_config import KubeConfigLoader, KubeConfigMerger

    merged = KubeConfigMerger(paths).config
    source: RenewedToken | None = None
    found_oidc = oidc_user(merged, context, **source_options)
    found = None if found_oidc is not None else exec_user(merged, context)
    if found_oidc is not None:
        user, source = found_oidc
        first = await source.current()  # bounded; fails here in one line
        user.pop("auth-provider")  # the loader takes the token as static; the hook renews it
        user["token"] = first.token
    elif found is not None:
        user, plugin, cluster = found
        source = TokenSource(plugin, cluster, **source_options)
        first = await source.current()  # bounded; fails here with the plugin's words
        user.pop("exec")
        if first.token:
            user["token"] = first.token  # the loader takes it as static; the hook refreshes it
        else:  # a client certificate: handed to the loader as kubeconfig data (not refreshed)
            user["client-certificate-data"] = base64.b64encode(
                first.client_certificate.encode()).decode()
            user["client-key-data"] = base64.b64encode(first.client_key.encode()).decode()
            source = None
    loader = KubeConfigLoader(config_dict=merged, active_context=context, config_base_path=None)
    await loader.load_and_set(configuration)
    if source is not None:
        source.install(configuration)
    return source
