"""Toxiproxy, the link emulator between the agent and an API server (this kernel has no netem).

``ensure_binary()`` builds Shopify's toxiproxy server from its Go module on first use
(``go install github.com/Shopify/toxiproxy/v2/cmd/server@VERSION``) into
``~/.cache/bridge/toxiproxy-VERSION/`` — keyed by version, so a fresh machine builds it once
and a version bump builds anew. ``Toxiproxy`` runs the server as a child; ``Link`` is one proxy
in it, with the link shapes the benchmark and the fault suite need (RTT, bandwidth, reset,
stall), all through toxiproxy's own HTTP API.

Shapes are per direction: a link of RTT ``r`` is ``r/2`` of latency each way, and a bandwidth of
``b`` bit/s is a ``bandwidth`` toxic of ``b`` on each stream (toxiproxy counts KB/s = 1000 B/s).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procs

VERSION = "v2.12.0"
MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
BUILD_TIMEOUT = 1800.0  # a cold module download + build on a busy 2-core machine
START_TIMEOUT = 30.0


def cache_dir(version: str = VERSION) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bridge" / f"toxiproxy-{version}"


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists()
                                else None)
    if go is None:
        raise RuntimeError("toxiproxy: no Go toolchain on PATH (nor /usr/local/go/bin/go); "
                           "it is needed once to build the link emulator. Nothing was run.")
    return go


def ensure_binary(version: str = VERSION, log: Any = None) -> Path:
    """The toxiproxy server binary for ``version``, built on first use (one builder at a time:
    concurrent callers wait on a lock file and reuse the result)."""
    where = cache_dir(version)
    binary = where / "bin" / "server"
    if binary.exists():
        return binary
    where.mkdir(parents=True, exist_ok=True)
    with open(where / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        if log:
            log(f"building toxiproxy {version} from its Go module (once, into {where})")
        env = dict(os.environ, GOBIN=str(where / "bin.tmp"), CGO_ENABLED="0",
                   GOFLAGS="-trimpath")
        proc = subprocess.run(
            ["nice", "-n", "10", _go(), "install", f"{MODULE}@{version}"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=BUILD_TIMEOUT, cwd=where,
        )
        if proc.returncode != 0 or not (where / "bin.tmp" / "server").exists():
            raise RuntimeError(f"toxiproxy: go install {MODULE}@{version} failed "
                               f"({proc.returncode}): {proc.stderr.strip()[-800:]}")
        shutil.rmtree(where / "bin", ignore_errors=True)
        os.replace(where / "bin.tmp", where / "bin")
    return binary


@dataclass(frozen=True)
class Shape:
    """A link: round-trip time in ms and bandwidth in bit/s (0 = unlimited)."""

    name: str
    rtt_ms: float
    bandwidth_bps: float = 0.0

    @property
    def rtt_s(self) -> float:
        return self.rtt_ms / 1000.0

    @property
    def bdp_bytes(self) -> int:
        """Bandwidth-delay product: the bytes in flight needed to fill the link."""
        return int(self.bandwidth_bps / 8 * self.rtt_s)


class Toxiproxy:
    """A toxiproxy server child listening for its API on 127.0.0.1."""

    def __init__(self, binary: Path) -> None:
        self.api_port = procs.free_port()
        self.proc = procs.Proc("toxiproxy", [str(binary), "-host", "127.0.0.1",
                                             "-port", str(self.api_port)],
                               env=procs.python_env({"LOG_LEVEL": "warn"}))
        procs.wait_port_open("127.0.0.1", self.api_port, START_TIMEOUT, self.proc)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"toxiproxy {method} {path}: {exc.code} "
                               f"{exc.read().decode(errors='replace')[:300]}") from exc
        return json.loads(raw) if raw.strip() else None

    def link(self, name: str, upstream: str) -> Link:
        """A new proxy on a free local port forwarding to ``upstream`` (host:port)."""
        port = procs.free_port()
        self.request("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}",
                                          "upstream": upstream, "enabled": True})
        return Link(self, name, port)

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # a stalled (stopped) server cannot take SIGTERM
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.stop()


@contextlib.contextmanager
def running(log: Any = None) -> Iterator[Toxiproxy]:
    server = Toxiproxy(ensure_binary(log=log))
    try:
        yield server
    finally:
        server.stop()


class Link:
    """One proxy: clients connect to ``127.0.0.1:port`` and reach its upstream through the
    toxics set here."""

    def __init__(self, server: Toxiproxy, name: str, port: int) -> None:
        self.server = server
        self.name = name
        self.port = port
        self.shape: Shape | None = None
        self.stalled = False

    def _toxic(self, toxic: str, kind: str, stream: str, attributes: dict[str, Any]) -> None:
        self.server.request("POST", f"/proxies/{self.name}/toxics",
                            {"name": toxic, "type": kind, "stream": stream,
                             "toxicity": 1.0, "attributes": attributes})

    def _remove(self, toxic: str) -> None:
        with contextlib.suppress(RuntimeError):  # 404: not there
            self.server.request("DELETE", f"/proxies/{self.name}/toxics/{toxic}")

    def toxics(self) -> list[str]:
        return [t["name"] for t in self.server.request("GET", f"/proxies/{self.name}/toxics")]

    def set_shape(self, shape: Shape | None) -> None:
        """Latency (half the RTT each way) and bandwidth (each way); None: a clean link."""
        for stream in ("up", "down"):
            self._remove(f"latency_{stream}")
            self._remove(f"bandwidth_{stream}")
        self.shape = shape
        if shape is None:
            return
        for stream, toxiproxy_stream in (("up", "upstream"), ("down", "downstream")):
            if shape.rtt_ms:
                self._toxic(f"latency_{stream}", "latency", toxiproxy_stream,
                            {"latency": int(round(shape.rtt_ms / 2)), "jitter": 0})
            if shape.bandwidth_bps:
                self._toxic(f"bandwidth_{stream}", "bandwidth", toxiproxy_stream,
                            {"rate": max(1, int(shape.bandwidth_bps / 8 / 1000))})

    def reset(self) -> None:
        """Reset (RST) every connection through the link now; new connections work again."""
        self._toxic("reset", "reset_peer", "downstream", {"timeout": 0})
        self._toxic("reset_up", "reset_peer", "upstream", {"timeout": 0})
        # the toxic acts on data and on new links; disabling the proxy closes idle ones too
        self.server.request("POST", f"/proxies/{self.name}", {"enabled": False})
        self._remove("reset")
        self._remove("reset_up")
        self.server.request("POST", f"/proxies/{self.name}", {"enabled": True})

    def stall(self) -> None:
        """Hold all data both ways until ``resume``, which lets it through in order: a laptop
        asleep or a Wi-Fi gone quiet (TCP keeps the bytes and retransmits). Connections stay
        open; new ones complete their TCP handshake in the kernel and stall too.

        Done by freezing the emulator (SIGSTOP, then SIGCONT): the kernel holds the bytes in
        the sockets' buffers. Not with toxics: the ``timeout`` toxic drops the data and closes
        every connection when removed (a reset, not a stall), and removing an hour-long
        ``latency`` toxic while a held connection's peer has gone away blocks Toxiproxy's whole
        API (Shopify/toxiproxy#558, still open), which is exactly what a long stall causes.
        The API does not answer while stalled; every proxy of this server stalls together."""
        os.kill(self.server.proc.pid, signal.SIGSTOP)
        self.stalled = True

    def resume(self) -> None:
        if self.stalled:
            os.kill(self.server.proc.pid, signal.SIGCONT)
            self.stalled = False
