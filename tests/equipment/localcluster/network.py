"""Host networking of the local test cluster: instance locks, the bridge, pod sandboxes.

Every name derives from the instance index N (see `config.py`): the bridge `btc<N>br`, pod
network namespaces `btc<N>-<id>`, the host ends of the pods' veth pairs `btc<N>v<id>`. That is
what lets a later run find and remove what a dead one (kill -9) left behind: processes still
running inside its namespaces, the namespaces, links (their addresses go with them) and the
state directory.

Everything is done with `ip` from iproute2. Bridged traffic is kept out of the host firewall by
the bridge's own `nf_call_iptables 0` option, so no global setting is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import dns
from .config import NAME_PREFIX, STATE_ROOT, ClusterConfig

MAX_INSTANCES = 64
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
IP = shutil.which("ip") or "/usr/sbin/ip"

T = TypeVar("T")


class NetworkError(RuntimeError):
    """An `ip` command failed; the message names the command and what it printed."""


# -- instance index ------------------------------------------------------------------------


def _lock_path(index: int) -> Path:
    return STATE_ROOT / f"{NAME_PREFIX}{index}.lock"


_lock_paths: dict[int, Path] = {}  # fd -> its lock file, removed on release


def _try_lock(index: int) -> int | None:
    """The index's lock, or None when a live instance holds it.

    Lock files are removed on release, so after locking, the file must still be the one at
    the path (else another process removed it meanwhile and a newer file may be locked).
    """
    path = _lock_path(index)
    for _ in range(10):
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _lock_paths[fd] = path
            return fd
        os.close(fd)
    return None


def claim_index() -> tuple[int, int]:
    """Lowest free instance index N and an fd holding its lock for this process's lifetime.

    Leftovers of dead earlier instances (every index whose lock is free) are removed first.
    """
    cleanup_all_stale()
    for index in range(MAX_INSTANCES):
        fd = _try_lock(index)
        if fd is not None:
            cleanup_index(index)
            return index, fd
    raise RuntimeError(
        f"all {MAX_INSTANCES} local test cluster instances are in use (locks under {STATE_ROOT}); "
        "stop one and try again"
    )


def release_index(fd: int) -> None:
    """Give the index back: remove its lock file (while still holding it) and unlock."""
    path = _lock_paths.pop(fd, None)
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        os.close(fd)


def cleanup_all_stale() -> list[str]:
    """Remove the leftovers of every instance index whose lock is free; returns what it removed."""
    namespaces, links = _list_netns(), _list_links()
    seen = {_index_of(name) for name in namespaces + links}
    if STATE_ROOT.is_dir():
        for entry in STATE_ROOT.iterdir():
            match = re.fullmatch(rf"{NAME_PREFIX}(\d+)(\.lock)?", entry.name)
            if match:  # a state dir, or a lock file a killed instance could not remove
                seen.add(int(match.group(1)))
    removed: list[str] = []
    for index in sorted(i for i in seen if i is not None):
        fd = _try_lock(index)
        if fd is None:
            continue  # a live instance owns it
        try:
            removed += cleanup_index(index, namespaces, links)
        finally:
            release_index(fd)
    return removed


def _index_of(name: str) -> int | None:
    match = re.match(rf"{NAME_PREFIX}(\d+)(?:br$|v|-)", name)
    return int(match.group(1)) if match else None


def cleanup_index(
    index: int, namespaces: list[str] | None = None, links: list[str] | None = None
) -> list[str]:
    """Remove everything instance `index` may have left. Caller holds the index's lock."""
    removed: list[str] = []
    for ns in _list_netns() if namespaces is None else namespaces:
        if _index_of(ns) == index:
            killed = kill_netns_processes(ns)
            removed += [f"process {pid} in netns {ns}" for pid in killed]
            _ip_quiet("netns", "delete", ns)
            dns.remove_resolv_conf(ns)  # issue 10
            removed.append(f"netns {ns}")
    for link in _list_links() if links is None else links:
        if _index_of(link) == index:
            _ip_quiet("link", "delete", link)
            removed.append(f"link {link}")
    state_dir = STATE_ROOT / f"{NAME_PREFIX}{index}"
    if state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)
        removed.append(f"state dir {state_dir}")
    return removed


def netns_pids(ns: str) -> list[int]:
    """Processes whose network namespace is `ns` (as `ip netns pids`)."""
    try:
        target = os.stat(NETNS_DIR / ns)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


def kill_netns_processes(ns: str) -> list[int]:
    pids = [pid for pid in netns_pids(ns) if pid != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _list_netns() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NAME_PREFIX)]


def _list_links() -> list[str]:
    out = subprocess.run([IP, "-o", "link", "show"], capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines():
        # "12: btc0vabcd1234@if11: <...>"
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith(NAME_PREFIX):
                names.append(name)
    return names


def _ip_quiet(*args: str) -> None:
    subprocess.run([IP, *args], capture_output=True)


# -- async ip ------------------------------------------------------------------------------


async def ip(*args: str, batch: str | None = None) -> None:
    """Run `ip ARGS` (or `ip ARGS -batch -` fed with `batch`); NetworkError when it fails."""
    argv = [IP, *args] + (["-batch", "-"] if batch is not None else [])
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if batch is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(batch.encode() if batch is not None else None)
    if proc.returncode != 0:
        what = " ".join(argv) + (f" <<{batch!r}" if batch else "")
        raise NetworkError(f"{what} failed: {err.decode(errors='replace').strip()}")


# -- namespaces, per thread ----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(ns: str) -> None:
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


async def run_in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a fresh thread that has joined network namespace `ns`.

    Namespace membership is per thread; the thread ends with `fn`, so no other code ever runs
    in the pod's namespace by accident. Sockets made there stay in that namespace.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            if isinstance(result, socket.socket):
                result.close()
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def body() -> None:
        try:
            _enter_netns(ns)
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=body, name=f"netns-{ns}", daemon=True).start()
    return await future


def connect_localhost(port: int, timeout: float = 5.0) -> socket.socket:
    """Connect to localhost:port from the calling thread's namespace, IPv4 then IPv6."""
    errors = []
    for family, name, host in ((socket.AF_INET, "IPv4", "127.0.0.1"),
                               (socket.AF_INET6, "IPv6", "[::1]")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host.strip("[]"), port))
        except OSError as exc:
            sock.close()
            reason = (exc.strerror or str(exc)).lower()
            errors.append(f"{name}: dial tcp{name[-1]} {host}:{port}: connect: {reason}")
            continue
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise ConnectionRefusedError(" ".join(errors))


def write_sysctl(name: str, value: str) -> None:
    """Write a sysctl in the calling thread's namespaces (net.* ones are per network namespace)."""
    path = Path("/proc/sys") / name.replace(".", "/")
    path.write_text(str(value))


# -- the bridge and pod sandboxes ----------------------------------------------------------


@dataclass(frozen=True)
class Sandbox:
    """A pod's network: its namespace, the host end of its veth pair and its IP."""

    netns: str
    host_veth: str
    ip: ipaddress.IPv4Address


class Network:
    """The bridge `btc<N>br` with the gateway IP, pod sandboxes on it, ClusterIPs as /32s."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._free_ips = [
            ip_ for ip_ in config.pod_cidr.hosts() if ip_ != config.gateway
        ]  # allocated round robin: a freed IP goes to the back, so it is not reused at once
        self._sandboxes: dict[str, Sandbox] = {}
        self._service_ips: set[str] = set()
        self._up = False

    async def start(self) -> None:
        br = self.config.bridge_name
        await ip(
            "link", "add", br, "type", "bridge",
            "nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0",
        )
        self._up = True
        await ip(
            batch=f"addr add {self.config.gateway}/{self.config.pod_cidr.prefixlen} dev {br}\n"
            f"link set {br} up\n",
        )

    async def stop(self) -> None:
        for sandbox in list(self._sandboxes.values()):
            await self.remove_sandbox(sandbox)
        if self._up:
            _ip_quiet("link", "delete", self.config.bridge_name)
            self._up = False
        self._service_ips.clear()

    async def add_sandbox(self) -> Sandbox:
        if not self._free_ips:
            raise NetworkError(f"no free pod IP left in {self.config.pod_cidr}")
        pod_ip = self._free_ips.pop(0)
        sid = secrets.token_hex(4)
        sandbox = Sandbox(f"{self.config.prefix}-{sid}", f"{self.config.prefix}v{sid}", pod_ip)
        self._sandboxes[sandbox.netns] = sandbox
        try:
            await ip(
                batch=f"netns add {sandbox.netns}\n"
                f"link add {sandbox.host_veth} type veth peer name eth0 netns {sandbox.netns}\n"
                f"link set {sandbox.host_veth} master {self.config.bridge_name} up\n",
            )
            await ip(
                "-n", sandbox.netns,
                batch=f"link set lo up\n"
                f"addr add {pod_ip}/{self.config.pod_cidr.prefixlen} dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {self.config.gateway}\n",
            )
        except BaseException:
            await self.remove_sandbox(sandbox)
            raise
        return sandbox

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
        if self._sandboxes.pop(sandbox.netns, None) is None:
            return
        kill_netns_processes(sandbox.netns)
        _ip_quiet("link", "delete", sandbox.host_veth)
        _ip_quiet("netns", "delete", sandbox.netns)
        dns.remove_resolv_conf(sandbox.netns)  # issue 10
        self._free_ips.append(sandbox.ip)

    def service_ips(self) -> set[str]:
        return set(self._service_ips)

    async def add_service_ip(self, address: str) -> None:
        if address in self._service_ips:
            return
        await ip("addr", "add", f"{address}/32", "dev", self.config.bridge_name)
        self._service_ips.add(address)

    async def remove_service_ip(self, address: str) -> None:
        if address in self._service_ips:
            self._service_ips.discard(address)
            _ip_quiet("addr", "delete", f"{address}/32", "dev", self.config.bridge_name)
