"""Where the real cluster lives: state directory, ports, address ranges and names. Chosen not
to collide with the local test clusters (10.244.N.0/24 pods, 10.96.N.0/24 services)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "bridge-real"
CLUSTER_DOMAIN = "cluster.local"
PREFIX = "brreal"  # interfaces and netns this cluster makes start with it


@dataclass(frozen=True)
class Config:
    state: Path = Path("/var/lib/bridge-real-cluster")
    node_ip: str = "10.199.0.1"  # on an interface of ours: no dependency on the host's
    pod_cidr: str = "10.200.0.0/24"
    service_cidr: str = "10.201.0.0/24"
    apiserver_port: int = 16443
    etcd_client_port: int = 12379
    etcd_peer_port: int = 12380
    kubelet_port: int = 10250
    kubelet_healthz_port: int = 10248
    proxy_healthz_port: int = 10256
    proxy_metrics_port: int = 10249
    controller_manager_port: int = 10257
    scheduler_port: int = 10259
    bridge_interface: str = f"{PREFIX}0"  # the CNI bridge
    node_interface: str = f"{PREFIX}-node"  # carries node_ip (a veth pair with ...p)
    cgroup_root: str = "/bridge-real"  # every pod cgroup lives under it, in each hierarchy

    @property
    def api_service_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.service_cidr).network_address + 1)

    @property
    def dns_service_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.service_cidr).network_address + 10)

    @property
    def pod_gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address + 1)

    @property
    def server(self) -> str:
        return f"https://{self.node_ip}:{self.apiserver_port}"

    def path(self, *parts: str) -> Path:
        return self.state.joinpath(*parts)

    @property
    def containerd_socket(self) -> Path:
        return self.path("containerd", "containerd.sock")
