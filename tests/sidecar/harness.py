"""Run `python -m sidecar` as a real subprocess and talk to it with real clients.

Everything here is bounded: every wait has a timeout, every process is stopped
(SIGTERM, then SIGKILL) and every file lives under the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from sidecar import protocol
from tests.helpers import stop_process

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
SSH = "/usr/bin/ssh"


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports that are free on 0.0.0.0 and [::] right now."""
    ports: list[int] = []
    holders: list[socket.socket] = []
    try:
        while len(ports) < count:
            v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holders.append(v4)
            v4.bind(("0.0.0.0", 0))
            port = v4.getsockname()[1]
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            holders.append(v6)
            try:
                v6.bind(("::", port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in holders:
            sock.close()
    return ports


def base_env(**extra: str) -> dict[str, str]:
    """A small, fully known environment (LANG set so Python adds no LC_CTYPE)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


@dataclass
class ClientKey:
    key: asyncssh.SSHKey
    path: Path  # private key file for OpenSSH (mode 600)

    @property
    def public_line(self) -> str:
        return self.key.export_public_key("openssh").decode().strip()


def make_key(directory: Path, name: str) -> ClientKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = directory / name
    key.write_private_key(str(path))
    path.chmod(0o600)
    return ClientKey(key, path)


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    ssh_port: int
    health_port: int
    allowed: list[int]
    host_key_line: str
    env: dict[str, str]
    log_path: Path
    known_hosts: Path
    stopped: bool = field(default=False)

    # -- observation
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"sidecar log never showed {needle!r}:\n{self.log()}")

    def http(self, path: str, host: str = "127.0.0.1") -> tuple[int, dict[str, object]]:
        url = f"http://{'[' + host + ']' if ':' in host else host}:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_ready(self, expected: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        status = 0
        while time.monotonic() < deadline:
            status, _ = self.http(protocol.READY_PATH)
            if status == expected:
                return
            time.sleep(0.05)
        raise AssertionError(f"/ready stayed {status}, expected {expected}\n{self.log()}")

    # -- clients
    async def connect(self, key: ClientKey, **kwargs: object) -> asyncssh.SSHClientConnection:
        host_key = asyncssh.import_public_key(self.host_key_line)
        options: dict[str, object] = {
            "username": "developer",
            "client_keys": [key.key],
            "known_hosts": ([host_key], [], []),
            "agent_path": None,
        }
        options.update(kwargs)
        return await asyncio.wait_for(
            asyncssh.connect("127.0.0.1", self.ssh_port, **options),  # type: ignore[arg-type]
            20,
        )

    def ssh_argv(self, key: ClientKey, *args: str) -> list[str]:
        return [
            SSH,
            "-F", "/dev/null",
            "-i", str(key.path),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10",
            "-p", str(self.ssh_port),
            *args,
        ]

    def ssh(
        self,
        key: ClientKey,
        *command: str,
        opts: Sequence[str] = (),
        env: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run the stock OpenSSH client to completion."""
        return subprocess.run(
            self.ssh_argv(key, *opts, "developer@127.0.0.1", *command),
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )

    # -- lifecycle
    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        stop_process(self.proc, STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_sidecar(
    tmp_path: Path,
    authorized: ClientKey,
    allowed: Sequence[int] | None = None,
    *,
    extra_env: dict[str, str] | None = None,
    user: int | None = None,
    prefix: Sequence[str] = (),
) -> Sidecar:
    ssh_port, health_port, *rest = free_ports(2 + (2 if allowed is None else 0))
    ports = list(rest if allowed is None else allowed)
    env = base_env(
        **{
            protocol.ENV_AUTHORIZED_KEY: authorized.public_line,
            protocol.ENV_PORTS: ",".join(str(p) for p in ports),
            protocol.ENV_SSH_PORT: str(ssh_port),
            protocol.ENV_HEALTH_PORT: str(health_port),
        }
    )
    env.update(extra_env or {})
    log_path = tmp_path / f"sidecar-{ssh_port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "sidecar"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            user=user,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith(protocol.HOST_KEY_LOG_PREFIX):
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(
            f"sidecar printed {line!r} instead of a host key:\n{log_path.read_text()}"
        )
    host_key_line = line[len(protocol.HOST_KEY_LOG_PREFIX):].strip()
    known_hosts = tmp_path / f"known_hosts-{ssh_port}"
    known_hosts.write_text(f"[127.0.0.1]:{ssh_port} {host_key_line}\n")
    return Sidecar(
        proc, ssh_port, health_port, ports, host_key_line, env, log_path, known_hosts
    )


@contextlib.contextmanager
def running_sidecar(tmp_path: Path, authorized: ClientKey, **kwargs: object) -> Iterator[Sidecar]:
    sidecar = start_sidecar(tmp_path, authorized, **kwargs)  # type: ignore[arg-type]
    try:
        yield sidecar
    finally:
        sidecar.stop()


@contextlib.contextmanager
def popen(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A background client process, always stopped at the end."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        stop_process(proc, 10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def non_loopback_addresses() -> list[str]:
    """This host's own source addresses toward the outside (IPv4, IPv6), not loopback.

    Taken from `ip route get` so they belong to the stable uplink, not to bridges that
    other tests (the local cluster) create and remove meanwhile.
    """
    found: list[str] = []
    for family, probe in (("-4", "192.0.2.123"), ("-6", "2001:db8::123")):
        result = subprocess.run(
            ["ip", "-j", family, "route", "get", probe],
            capture_output=True, text=True, timeout=10,
        )
        if result.returncode != 0:
            continue
        for route in json.loads(result.stdout or "[]"):
            source = route.get("prefsrc")
            if source and source not in ("127.0.0.1", "::1") and source not in found:
                found.append(source)
    return found


# ---------------------------------------------------------------- local TCP services


class TagServer:
    """A local TCP server that answers each connection with `tag:` + the bytes it got,
    after the peer half-closes; proves traffic crossed in both directions."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0

    async def __aenter__(self) -> TagServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        data = await reader.read()
        writer.write(self.tag + b":" + data)
        await writer.drain()
        writer.close()


EXCHANGE_TIMEOUT = 20.0


async def exchange(host: str, port: int, payload: bytes) -> bytes:
    """Connect, send payload, half-close, read everything back (bounded)."""
    async with asyncio.timeout(EXCHANGE_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        data = await reader.read()
        writer.close()
        return data


APP_YAML = "greeting: hello from the configmap\n"


TLS_KEY = "-----BEGIN FAKE KEY-----\nsecret\n-----END FAKE KEY-----\n"


def atomic_writer_volume(root: Path, files: dict[str, str]) -> None:
    """A volume as the kubelet's atomic writer leaves it."""
    stamp = "..2024_01_02_03_04_05.123456789"
    (root / stamp).mkdir(parents=True)
    for name, text in files.items():
        (root / stamp / name).write_text(text)
        (root / name).symlink_to(f"..data/{name}")
    (root / "..data").symlink_to(stamp)


@dataclass
class Pod:
    root: Path  # where the "volumes" live on this host
    mounts: list[dict[str, object]]


def make_pod(tmp_path: Path, *, writable_data: bool) -> Pod:
    root = tmp_path / "node"
    config = root / "configmap"
    secret = root / "secret"
    data = root / "emptydir"
    atomic_writer_volume(config, {"app.yaml": APP_YAML})
    atomic_writer_volume(secret, {"tls.key": TLS_KEY})
    data.mkdir(parents=True)
    (data / "prepared.txt").write_text("written by an init container\n")
    # escapes planted inside the volumes
    (config / "etc-link").symlink_to("/etc")
    (config / "passwd-link").symlink_to("../../../../../../../../etc/passwd")
    (data / "to-secret").symlink_to(secret)  # another mount: still outside this one
    outside = tmp_path / "outside.txt"
    outside.write_text("not in any mount\n")
    mounts: list[dict[str, object]] = [
        {"path": "/etc/config", "source": str(config), "writable": False},
        {"path": "/var/run/secrets/app", "source": str(secret), "writable": False},
        {"path": "/data", "source": str(data), "writable": writable_data},
    ]
    return Pod(root, mounts)
