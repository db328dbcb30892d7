"""Outbound: the laptop process reaches the cluster (names, ClusterIPs, pod IPs) from the pod.

The orchestrator's API:

    mode, hint = outbound.choose_mode(opts.outbound, outbound.find_torsocks())  # before changes
    forwards = [outbound.parse_forward(s) for s in opts.forwards]              # idem
    async with outbound.serve(get_connection, mode, forwards) as ob:           # after SSH is up
        env = ob.child_env(pod_env_overlaid)   # command mode: the child's environment
        argv = ob.wrap_argv(command)           # command mode: under torsocks for inject
        file_env = ob.attach_env(pod_env)      # attach mode: what the env file gets
        ob.describe()                          # one line for progress

`get_connection` returns the current SSH connection (it changes when bridge reconnects).
`start()` is the same without `async with`; `await ob.close()` ends it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from bridge.errors import BridgeError
from bridge.local import envout, envsyntax
from bridge.transport.outbound import forwards as forwards_mod
from bridge.transport.outbound import inject
from bridge.transport.outbound.forwards import Forward
from bridge.transport.outbound.inject import Mode, choose_mode, find_torsocks
from bridge.transport.outbound.pod import GetConnection, Pod
from bridge.transport.outbound.server import Proxy, forward_one

__all__ = ["Forward", "Mode", "Outbound", "choose_mode", "find_torsocks", "parse_forward",
           "serve", "start"]

LOOPBACK = "127.0.0.1"


def parse_forward(spec: str) -> Forward:
    return forwards_mod.parse(spec)


@dataclass
class Outbound:
    mode: Mode
    user: str
    password: str
    port: int = 0
    torsocks: str | None = None
    conf_file: str | None = None
    preload: str | None = None  # libtorsocks, for attach mode's LD_PRELOAD
    forwards: list[tuple[Forward, int]] = field(default_factory=list)  # (forward, local port)
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)
    _proxy: Proxy | None = None
    _tmpdir: str | None = None

    # -- what the child gets --------------------------------------------------------------
    @property
    def socks_url(self) -> str:
        return f"socks5h://{self.user}:{self.password}@{LOOPBACK}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.user}:{self.password}@{LOOPBACK}:{self.port}"

    def forward_env(self, pod_env: Mapping[str, str]) -> dict[str, str]:
        """Service-link variables rewritten to the --forward listeners."""
        out: dict[str, str] = {}
        for fwd, local in self.forwards:
            out.update(forwards_mod.rewrite(pod_env, fwd, local))
        return out

    def env(self) -> dict[str, str]:
        """Variables for a command started by bridge (command mode)."""
        if self.mode is Mode.INJECT:
            assert self.conf_file is not None
            return inject.torsocks_env(self.conf_file)
        if self.mode is Mode.PROXY:
            return inject.proxy_env(self.socks_url, self.http_url)
        return {}

    def attach_env(self) -> dict[str, str]:
        """Variables for the env file (attach mode): the proxy variables, and for inject what
        loads torsocks into the process started from it (LD_PRELOAD + its config file)."""
        if self.mode is Mode.NONE:
            return {}
        out = inject.proxy_env(self.socks_url, self.http_url)
        if self.mode is Mode.INJECT and self.preload and self.conf_file:
            out.update(inject.torsocks_env(self.conf_file))
            out["LD_PRELOAD"] = self.preload
        return out

    def child_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` (the pod's environment over the local one) plus outbound's variables."""
        out = dict(env)
        out.update(self.forward_env(env))
        out.update(self.env())
        return out

    def wrap_argv(self, argv: Sequence[str], path: str | None = None) -> list[str]:
        """The command as run: under torsocks for inject (found on `path`, the child's PATH;
        this process's by default)."""
        if self.mode is Mode.INJECT:
            assert self.torsocks is not None
            return inject.torsocks_argv(self.torsocks, argv, path)
        return list(argv)

    def describe(self) -> str:
        parts = []
        if self.mode is Mode.INJECT:
            parts.append("outbound: the command's TCP connections and name look-ups go out "
                         "from the pod (torsocks)")
        elif self.mode is Mode.PROXY:
            parts.append(f"outbound: SOCKS5/HTTP proxy for the pod on {LOOPBACK}:{self.port} "
                         "(ALL_PROXY, HTTP_PROXY, HTTPS_PROXY)")
        parts += [f"forwarding {LOOPBACK}:{local} -> {fwd.service}:{fwd.port} (from the pod)"
                  for fwd, local in self.forwards]
        return "; ".join(parts)

    def attach_hint(self, env_file: str, syntax: str = envsyntax.DEFAULT_SYNTAX) -> str:
        """How to start a process by hand so it takes the same path (attach mode): with the
        variables of `env_file` (in `syntax`) for that process alone, so the shell does not
        keep LD_PRELOAD and the proxy variables after the session."""
        if self.mode is Mode.NONE:
            return ""
        how = ("LD_PRELOAD loads torsocks, ALL_PROXY/HTTP_PROXY cover programs it cannot reach"
               if self.mode is Mode.INJECT and self.preload else
               "ALL_PROXY/HTTP_PROXY/HTTPS_PROXY, for programs that honour them")
        tool = (" (python-dotenv's CLI: pip install 'python-dotenv[cli]'; or --env-syntax "
                "sh, fish, csh, powershell for your shell)" if syntax == "dotenv" else "")
        return (f"outbound: start your process with the variables of {env_file}, for it alone "
                f"(your shell keeps none of them): `{envout.scoped_run(syntax, env_file)}`"
                f"{tool}; its connections go out from the pod ({how})")

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._proxy is not None:
            await self._proxy.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


async def start(get_connection: GetConnection, mode: Mode,
                forwards: Sequence[Forward] = ()) -> Outbound:
    """Listen on 127.0.0.1 (an ephemeral port) and write torsocks' config for inject."""
    user = "bridge-" + secrets.token_hex(4)
    password = secrets.token_urlsafe(24)
    pod = Pod(get_connection)
    ob = Outbound(mode=mode, user=user, password=password)
    try:
        if mode is not Mode.NONE:
            ob._proxy = proxy = Proxy(pod, user, password)
            server = await asyncio.start_server(proxy.handle, LOOPBACK, 0)
            ob._servers.append(server)
            ob.port = int(server.sockets[0].getsockname()[1])
        if mode is Mode.INJECT:
            ob.torsocks = find_torsocks()
            if ob.torsocks is None:
                raise BridgeError("torsocks disappeared from PATH")
            ob._tmpdir = tempfile.mkdtemp(prefix="bridge-outbound-")
            ob.conf_file = os.path.join(ob._tmpdir, "torsocks.conf")
            inject.write_config(ob.conf_file,
                                inject.config_text(LOOPBACK, ob.port, user, password))
            ob.preload = await asyncio.to_thread(inject.library_path, ob.torsocks)
        for fwd in forwards:
            def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                        f: Forward = fwd) -> asyncio.Future[None]:
                return asyncio.ensure_future(forward_one(pod, f.service, f.port, r, w))
            try:
                server = await asyncio.start_server(handler, LOOPBACK, fwd.local)
            except OSError as e:
                raise BridgeError(f"--forward {fwd.spec()}: cannot listen on "
                                  f"{LOOPBACK}:{fwd.local}: {e.strerror}") from None
            ob._servers.append(server)
            ob.forwards.append((fwd, int(server.sockets[0].getsockname()[1])))
    except BaseException:
        await ob.close()
        raise
    return ob


@asynccontextmanager
async def serve(get_connection: GetConnection, mode: Mode,
                forwards: Sequence[Forward] = ()) -> AsyncIterator[Outbound]:
    ob = await start(get_connection, mode, forwards)
    try:
        yield ob
    finally:
        await ob.close()
