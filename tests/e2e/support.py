"""End-to-end helpers: a sample workload per test in its own namespace, `bridge` as a real
subprocess, HTTP through the Service's ClusterIP, and the check that the cluster is restored.

The workload's container runs a tiny HTTP server answering `cluster <pod> <port>` on every port
in its PORTS variable (tests/equipment/workload.py); the swapped-in local child
(`LOCAL_SERVER`) answers `laptop <port>`, so each response says who served it.

`namespace` and `make_workload` are fixtures: tests/e2e/conftest.py and
tests/realcluster/conftest.py import them, the tests ask for them by name.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from bridge.model import state
from tests.equipment.realcluster import fixture as real_cluster
from tests.equipment.workload import workload_manifest
from tests.helpers import http_server

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0  # bound on any single wait in these tests
# How long the Service may still route to the old pods once bridge said `swapped:` (kube-proxy
# reprograms the node on its own time; bridge can only see the EndpointSlices).
ROUTED = 15.0
ROUTED_IN_A_ROW = 10

# argv: PORT... ; GET /exit/N answers then exits with code N; GET /env answers the environment.
LOCAL_SERVER = http_server("""
if self.path == "/env":
    body = json.dumps(dict(os.environ)).encode()
else:
    body = f"laptop {port}\\n".encode()
""", after="""
if self.path.startswith("/exit/"):
    os._exit(int(self.path.rsplit("/", 1)[1]))
""", ready='print("local server up", flush=True)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(ip: str, port: int, path: str = "/", timeout: float = 3.0) -> str:
    """One HTTP/1.0 GET over a fresh connection; the body, or raise OSError."""
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise OSError(f"bad HTTP response: {data[:200]!r}")
    return body.decode()


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT,
               every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, AssertionError, subprocess.SubprocessError) as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def until_laptop_answers(ip: str, port: int, expected: str, path: str = "/") -> None:
    """Once bridge said it swapped: every request is answered (an error fails at once), by the
    old pods (they serve while terminating) until the Service routes to the laptop, which
    must answer `expected` within ROUTED seconds, ROUTED_IN_A_ROW times in a row (kube-proxy
    may add the new endpoint before it drops the old ones: a mix for a moment)."""
    deadline = time.monotonic() + ROUTED
    in_a_row = 0
    while True:
        body = http_get(ip, port, path)
        in_a_row = in_a_row + 1 if body == expected else 0
        if in_a_row == ROUTED_IN_A_ROW:
            return
        assert body == expected or body.startswith("cluster "), \
            f"neither the old pods nor the laptop: {body!r}"
        if time.monotonic() > deadline:
            raise AssertionError(f"the Service still routes to the old pods {ROUTED:g}s "
                                 f"after the swap (last: {body!r})")
        if not in_a_row:
            time.sleep(0.2)


@dataclass
class Bridge:
    """`bridge` running as a subprocess; stderr collected in a file."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    stdout_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode} before "
                                     f"{text!r}:\n{self.stderr}")
            time.sleep(0.1)
        raise AssertionError(f"bridge did not say {text!r} within {timeout:g}s:\n{self.stderr}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 2 * WAIT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"bridge did not exit within {timeout:g}s:\n{self.stderr}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Workload:
    """A Deployment + Service in a namespace of its own, and how to drive bridge against it."""

    kubectl: Any
    kubeconfig: str
    namespace: str
    name: str
    replicas: int
    tmp: Path
    bridges: list[Bridge] = field(default_factory=list)
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    def k(self, *args: str, check: bool = True) -> str:
        out: str = self.kubectl("-n", self.namespace, *args, check=check)
        return out

    def get(self, kind: str, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.k("get", kind, name, "-o", "json"))
        return data

    def service_ip(self, service: str | None = None) -> str:
        return str(self.get("service", service or self.name)["spec"]["clusterIP"])

    def bridge(self, *args: str, env: dict[str, str] | None = None) -> Bridge:
        """Start `bridge --kubeconfig K -n NS ARGS...`; it is killed at teardown if still alive."""
        n = len(self.bridges)
        err, out = self.tmp / f"bridge{n}.err", self.tmp / f"bridge{n}.out"
        # The suite's own settings (BRIDGE_TEST_CLUSTER...) are not the laptop's environment.
        laptop = {k: v for k, v in os.environ.items() if k not in real_cluster.SETTINGS}
        # a beat a second (not 10 s): `bridge restore` watches a heartbeat interval and a half
        full_env = {**laptop, "PYTHONUNBUFFERED": "1", "BRIDGE_HEARTBEAT_INTERVAL": "1",
                    **(env or {})}
        with open(err, "w") as e, open(out, "w") as o:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "--kubeconfig", self.kubeconfig,
                 "-n", self.namespace, *args],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=full_env, text=True)
        b = Bridge(proc, err, out)
        self.bridges.append(b)
        return b

    def another_laptop(self) -> dict[str, str]:
        """The environment of a bridge standing for one on another machine: a state directory
        of its own (a machine's records of its sessions, bridge/local/records.py, are not shared),
        so a session it leaves is judged by its heartbeat alone."""
        home = self.tmp / f"laptop-{len(self.bridges)}"
        home.mkdir(exist_ok=True)
        return {"XDG_STATE_HOME": str(home)}

    def run_bridge(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, Bridge]:
        b = self.bridge(*args, env=env)
        return b.wait(), b

    def local_server(self, *ports: int) -> subprocess.Popen[str]:
        """The laptop-side server, run by the test itself (attach mode)."""
        p = subprocess.Popen([sys.executable, "-c", LOCAL_SERVER, *map(str, ports)],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.children.append(p)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "local server up"
        return p

    def attach(self, target: str = "hello",
               env: dict[str, str] | None = None) -> tuple[Bridge, int]:
        """An attach-mode swap of TARGET's `http` port to a local server on a free port,
        returned once bridge says it is attached, with that port."""
        port = free_port()
        self.local_server(port)
        b = self.bridge("swap", target, "--port", f"http:{port}", env=env)
        b.wait_for("attached")
        return b, port

    def proxies(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.k(
            "get", "deployments", "-l", f"{state.MANAGED_BY_LABEL}={state.MANAGED_BY}",
            "-o", "json"))["items"]
        return items

    def our_annotations(self) -> dict[str, str]:
        ann = self.get("deployment", self.name)["metadata"].get("annotations") or {}
        return {k: v for k, v in ann.items() if k.startswith(state.PREFIX)}

    def assert_restored(self) -> None:
        """The original has its replicas (Ready), and nothing of bridge's remains."""
        dep = self.get("deployment", self.name)
        assert dep["spec"]["replicas"] == self.replicas
        assert self.our_annotations() == {}
        assert self.proxies() == []
        wait_until("the original to be Ready",
                   lambda: (self.get("deployment", self.name).get("status") or {})
                   .get("readyReplicas") == self.replicas)
        wait_until("the proxy pods to be gone", lambda: json.loads(self.k(
            "get", "pods", "-l", state.SESSION_LABEL, "-o", "json"))["items"] == [])

    def assert_swapped(self) -> dict[str, Any]:
        """The original is at zero with our lock; exactly one proxy. Returns the proxy."""
        dep = self.get("deployment", self.name)
        assert dep["spec"]["replicas"] == 0
        assert state.decode(dep["metadata"].get("annotations")) is not None
        proxies = self.proxies()
        assert len(proxies) == 1
        return proxies[0]

    def cleanup(self) -> None:
        for b in self.bridges:
            b.kill()
        for c in self.children:
            if c.poll() is None:
                c.kill()
                c.wait(timeout=10)


@pytest.fixture
def namespace(kubectl: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    ns = f"e2e-{request.node.name[:30].lower().replace('_', '-').strip('-')}-" \
         f"{secrets.token_hex(2)}"
    ns = "".join(c if c.isalnum() or c == "-" else "-" for c in ns)
    kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
    try:
        yield ns
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def make_workload(cluster: Any, kubectl: Any, namespace: str,
                  tmp_path: Path) -> Iterator[Callable[..., Workload]]:
    """Create the sample workload; at teardown, check that bridge left the cluster as it was."""
    made: list[Workload] = []

    def make(name: str = "hello", replicas: int = 2, ports: list[dict[str, Any]] | None = None,
             service_ports: list[dict[str, Any]] | None = None, prelude: str = "",
             **kw: Any) -> Workload:
        if ports is None:
            ports = [{"name": "http", "containerPort": free_port()}]
        if service_ports is None:
            service_ports = [{"name": "http", "port": 80, "targetPort": ports[0].get("name")
                              or ports[0]["containerPort"]}]
        if prelude:
            kubectl("-n", namespace, "apply", "--validate=false", "-f", "-", input=prelude)
        kubectl("-n", namespace, "apply", "--validate=false", "-f", "-",
                input=workload_manifest(name, replicas, ports, service_ports, **kw))
        w = Workload(kubectl, cluster.kubeconfig, namespace, name, replicas, tmp_path)
        made.append(w)
        wait_until(f"deployment/{name} to be Ready",
                   lambda: (w.get("deployment", name).get("status") or {})
                   .get("readyReplicas") == replicas)
        ip = w.service_ip()
        wait_until("the Service to answer from the cluster",
                   lambda: http_get(ip, 80).startswith("cluster "))
        return w

    yield make
    for w in made:
        w.cleanup()
    for w in made:  # after every test: original replicas, no proxy, no annotation of ours
        w.assert_restored()


def proxy_pod(w: Workload) -> dict[str, Any]:
    pods: list[dict[str, Any]] = json.loads(
        w.k("get", "pods", "-l", state.SESSION_LABEL, "-o", "json"))["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def drop_ssh(b: Any, pod_name: str) -> psutil.Process:
    """Drop bridge's SSH connection while the pod stays up: freeze the sidecar until bridge
    says the connection is lost, thaw it, wait for the reconnect; the sidecar process."""
    sidecar = sidecar_process(pod_name)
    sidecar.suspend()
    try:
        b.wait_for("connection to the proxy pod lost")
    finally:
        sidecar.resume()
    b.wait_for("reconnected")
    return sidecar


def sidecar_process(pod_name: str) -> psutil.Process:
    """The `python -m sidecar` process running in pod `pod_name` (its HOSTNAME)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline[1:3] != ["-m", "sidecar"]:
            continue
        try:
            if proc.environ().get("HOSTNAME") == pod_name and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            continue
    assert len(found) == 1, f"sidecar processes of {pod_name}: {found}"
    return found[0]


def beat(w: Workload, proxy: str) -> int:
    return int(state.beat_of(w.get("deployment", proxy)["metadata"].get("annotations")) or 0)


def until_the_heartbeat_settles(w: Workload, proxy: str) -> None:
    """After a SIGKILL, until a beat the killed bridge had in flight has landed (a change seen
    later would rightly count as a sign of life): the same value twice, a second apart."""
    last: list[int] = []

    def same_twice() -> bool:
        last.append(beat(w, proxy))
        return len(last) > 1 and last[-1] == last[-2]

    wait_until("the killed session's last heartbeat to land", same_twice, every=1.0)
