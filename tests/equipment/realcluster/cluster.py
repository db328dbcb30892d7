"""Start and stop the real single-node cluster (see the package docstring).

Order: clean what an earlier run left; compile (or find cached) binaries and build (or find
cached) images; only then touch the host: PKI, network, cgroups, containerd, etcd, API server,
the cluster's objects, controller-manager, scheduler, kubelet, kube-proxy; wait for the node to
be Ready, CoreDNS to be Ready and a pod to run; write the kubeconfig. Stop: kubelet first (so
nothing restarts), then every other process, then the sweep in cleanup.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cleanup, components, gobuild, images, kubeconfigs, objects, pki
from .config import NODE_NAME, Config

Log = Callable[[str], None]
KUBECTL_CANDIDATES = (Path(__file__).resolve().parents[3] / ".venv" / "bin" / "kubectl",
                      Path("/usr/bin/kubectl"), Path("/usr/local/bin/kubectl"))
STOP_GRACE = 10.0
LOGS_KEPT = Path("/tmp/bridge-real-cluster-logs")


class StartError(RuntimeError):
    pass


@dataclass
class Component:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def kubectl_command() -> str:
    for p in KUBECTL_CANDIDATES:
        if p.exists():
            return str(p)
    found = shutil.which("kubectl")
    if found is None:
        raise StartError("kubectl not found (run `make setup`: .venv gets one)")
    return found


def wait_for(what: str, check: Callable[[], Any], timeout: float,
             alive: Callable[[], None] = lambda: None) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        alive()
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, subprocess.SubprocessError, KeyError) as err:
            last = err
        time.sleep(0.5)
    raise StartError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last}); "
                     f"the components' logs will be in {LOGS_KEPT}")


@dataclass
class RealCluster:
    kubeconfig: Path
    sidecar_image: str
    log: Log
    config: Config = field(default_factory=Config)
    running: list[Component] = field(default_factory=list)
    bins: dict[str, Path] = field(default_factory=dict)
    admin_kubeconfig: Path | None = None

    # -- pieces -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Component:
        logs = self.config.path("logs")
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.config.state)
        c = Component(name, proc, log)
        self.running.append(c)
        return c

    def _check_alive(self) -> None:
        for c in self.running:
            if c.proc.poll() is not None:
                raise StartError(f"{c.name} exited with code {c.proc.returncode}:\n{c.tail()}")

    def _https_ok(self, url: str, cert: pki.Issued) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
        with urllib.request.urlopen(url, context=ctx, timeout=3) as resp:
            return bool(resp.status == 200)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        assert self.admin_kubeconfig is not None
        result = subprocess.run([self._kubectl, "--kubeconfig", str(self.admin_kubeconfig),
                                 *args], input=input, capture_output=True, text=True,
                                timeout=60)
        if check and result.returncode != 0:
            raise StartError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def apply(self, objs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))

    def _write(self, name: str, text: str, mode: int = 0o644) -> Path:
        path = self.config.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=mode)
        path.write_text(text)
        return path

    # -- host setup ---------------------------------------------------------------------

    def _network(self) -> None:
        c = self.config
        if shutil.which("modprobe"):  # usually loaded already (a container has no modprobe)
            subprocess.run(["modprobe", "br_netfilter"], capture_output=True)
        cleanup.save_sysctls()
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        for cmd in (
            # The node's address, on a veth pair of ours (this kernel may lack the dummy link
            # type, and the CNI bridge refuses a bridge that has another address).
            ["ip", "link", "add", c.node_interface, "type", "veth", "peer", "name",
             c.node_interface + "p"],
            ["ip", "addr", "add", f"{c.node_ip}/32", "dev", c.node_interface],
            ["ip", "link", "set", c.node_interface + "p", "up"],
            ["ip", "link", "set", c.node_interface, "up"],
            # The CNI bridge plugin adopts this bridge; packets crossing it pass iptables (for
            # kube-proxy's Service rules) without the host-wide bridge-nf-call-iptables.
            ["ip", "link", "add", c.bridge_interface, "type", "bridge", "nf_call_iptables", "1"],
            ["ip", "link", "set", c.bridge_interface, "up"],
        ):
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise StartError(f"{' '.join(cmd)}: {result.stderr.strip()}")

    def _cgroups(self) -> None:
        root = self.config.cgroup_root.lstrip("/")
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if not hierarchy.is_dir() or hierarchy.name == "unified":
                continue
            d = hierarchy / root
            d.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((hierarchy / f).read_text())

    def _containerd(self) -> None:
        c = self.config
        conf = self._write("containerd/config.toml", components.containerd_toml(c))
        self._write("cni/net.d/10-bridge-real.conflist",
                    components.dumps(components.cni_conflist(c)))
        self._spawn("containerd", ["containerd", "--config", str(conf)])
        wait_for("containerd", lambda: c.containerd_socket.exists() and subprocess.run(
            ["ctr", "--address", str(c.containerd_socket), "version"],
            capture_output=True).returncode == 0, 30, self._check_alive)

    def _import(self, image: images.Image) -> None:
        result = subprocess.run(
            ["ctr", "--address", str(self.config.containerd_socket), "-n", "k8s.io", "images",
             "import", "--no-unpack=false", str(image.archive)],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise StartError(f"importing {image.name} into containerd failed: "
                             f"{result.stderr.strip()}")

    # -- start / stop -------------------------------------------------------------------

    def build(self) -> list[images.Image]:
        """Binaries and images (cached); nothing on the host is changed yet."""
        self.bins = gobuild.ensure_all(self.log)
        base = images.python_base_image(self.log)
        return [
            images.binary_image(images.PAUSE_IMAGE, self.bins["pause"], "/pause", [], self.log),
            images.binary_image(images.COREDNS_IMAGE, self.bins["coredns"], "/coredns", [],
                                self.log),
            base,
            images.sidecar_image(self.sidecar_image, base, self.log),
        ]

    def start(self) -> None:
        c = self.config
        started = time.monotonic()
        self._kubectl = kubectl_command()
        cleanup.sweep(c, self.log)
        built = self.build()
        c.state.mkdir(parents=True, mode=0o700)
        self.pki = ca = pki.make(c)
        admin_token, restricted_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        tokens = self._write("tokens.csv", f'{admin_token},bridge-admin,bridge-admin,'
                             f'"system:masters"\n{restricted_token},{objects.RESTRICTED_USER},'
                             f'{objects.RESTRICTED_USER}\n', 0o600)
        kcs = {}
        for name, cert in (("admin", ca.admin), ("controller-manager", ca.controller_manager),
                           ("scheduler", ca.scheduler), ("kubelet", ca.kubelet_client),
                           ("kube-proxy", ca.proxy)):
            kcs[name] = self._write(f"kubeconfigs/{name}.json", components.dumps(
                kubeconfigs.component(c.server, ca.ca, cert)), 0o600)
        self.admin_kubeconfig = kcs["admin"]
        self._network()
        self._cgroups()
        self._containerd()
        for image in built:
            self._import(image)
        self.log(f"images imported ({time.monotonic() - started:.0f}s)")

        self._spawn("etcd", [str(self.bins["etcd"]), *components.etcd_args(c, ca)])
        wait_for("etcd", lambda: self._https_ok(
            f"https://127.0.0.1:{c.etcd_client_port}/health", ca.apiserver_etcd_client),
            60, self._check_alive)
        self._spawn("kube-apiserver", [str(self.bins["kube-apiserver"]),
                                       *components.apiserver_args(c, ca, tokens)])
        wait_for("the API server", lambda: self._https_ok(f"{c.server}/readyz", ca.admin),
                 120, self._check_alive)
        wait_for("the default namespace", lambda: self.kubectl(
            "get", "namespace", "default", "-o", "name", check=False).strip(), 60,
            self._check_alive)
        self.apply(objects.rbac())
        self._spawn("kube-controller-manager", [
            str(self.bins["kube-controller-manager"]),
            *components.controller_manager_args(c, ca, kcs["controller-manager"])])
        self._spawn("kube-scheduler", [str(self.bins["kube-scheduler"]),
                                       *components.scheduler_args(c, kcs["scheduler"])])
        resolv = "/run/systemd/resolve/resolv.conf" if Path(
            "/run/systemd/resolve/resolv.conf").exists() else "/etc/resolv.conf"
        kubelet_conf = self._write("kubelet/config.json", components.dumps(
            components.kubelet_config(c, ca, resolv)))
        self._spawn("kubelet", [str(self.bins["kubelet"]),
                                *components.kubelet_args(c, kubelet_conf, kcs["kubelet"])])
        proxy_conf = self._write("kube-proxy/config.json", components.dumps(
            components.kube_proxy_config(c, kcs["kube-proxy"])))
        self._spawn("kube-proxy", [str(self.bins["kube-proxy"]),
                                   *components.kube_proxy_args(proxy_conf)])
        wait_for(f"node {NODE_NAME} to be Ready", self._node_ready, 120, self._check_alive)
        wait_for("the default ServiceAccount", lambda: self.kubectl(
            "get", "serviceaccount", "default", "-o", "name", check=False).strip(), 60,
            self._check_alive)
        self.apply(objects.coredns(c))
        smoke = objects.smoke_pod(images.PYTHON_IMAGE)
        self.apply([smoke])
        wait_for("a pod to run", lambda: self.kubectl(
            "get", "pod", "-n", "default", smoke["metadata"]["name"], "-o",
            "jsonpath={.status.phase}") == "Succeeded", 120, self._check_alive)
        self.kubectl("delete", "pod", "-n", "default", smoke["metadata"]["name"],
                     "--wait=false")
        wait_for("CoreDNS to be Ready", lambda: self.kubectl(
            "get", "deployment", "-n", "kube-system", "coredns", "-o",
            "jsonpath={.status.readyReplicas}") == "1", 120, self._check_alive)
        kubeconfigs.write(self.kubeconfig, kubeconfigs.user(c, ca, admin_token,
                                                             restricted_token))
        self.started_in = time.monotonic() - started

    def _node_ready(self) -> bool:
        node = json.loads(self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
                          or "{}")
        return any(cond.get("type") == "Ready" and cond.get("status") == "True"
                   for cond in (node.get("status") or {}).get("conditions") or [])

    def watch(self) -> str | None:
        """The first component that exited, described, or None while all run."""
        for comp in self.running:
            if comp.proc.poll() is not None:
                return f"{comp.name} exited with code {comp.proc.returncode}:\n{comp.tail()}"
        return None

    def stop(self) -> None:
        order = ["kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager",
                 "kube-apiserver", "etcd", "containerd"]
        by_name = {comp.name: comp for comp in self.running}
        for name in order:
            comp = by_name.get(name)
            if comp is None or comp.proc.poll() is not None:
                continue
            try:
                os.killpg(comp.proc.pid, signal.SIGTERM)
                comp.proc.wait(STOP_GRACE)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(comp.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                comp.proc.wait(STOP_GRACE)
        self.running.clear()
        logs = self.config.path("logs")
        if logs.is_dir():  # the components' logs outlive the run, for a look afterwards
            shutil.rmtree(LOGS_KEPT, ignore_errors=True)
            shutil.copytree(logs, LOGS_KEPT)
        cleanup.sweep(self.config, self.log)
