"""Settings of one local test cluster instance, shared by the API server side and the node side.

Several instances may run at once on one machine (parallel test sessions): each takes a free
index N under a lock, and every name and address it makes derives from N, so instances never
collide and a later run can find and remove what a dead one left behind.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.protocol import DEFAULT_IMAGE

STATE_ROOT = Path(os.environ.get("BRIDGE_TEST_CLUSTER_STATE", "/run/bridge-test-cluster"))
NAME_PREFIX = "btc"  # every netns / link name starts with btc<N>
# A sidecar image of another bridge release, as this bridge would meet it: the node runs the
# checkout's sidecar answering `version` with a protocol version no bridge speaks (99).
OTHER_PROTOCOL_SIDECAR_IMAGE = "bridge.local/sidecar-other-protocol:99"
OTHER_PROTOCOL_VERSION = 99


@dataclass(frozen=True)
class ClusterConfig:
    index: int  # 0..63, unique among live instances on this machine
    api_host: str = "127.0.0.1"
    api_port: int = 0  # 0: pick a free port
    sidecar_image: str = DEFAULT_IMAGE
    # Extra image-name -> argv mappings the node runs instead of a container's command.
    image_commands: dict[str, list[str]] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"{NAME_PREFIX}{self.index}"

    @property
    def bridge_name(self) -> str:
        return f"{self.prefix}br"

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network:
        """10.244.N.0/24 - the gateway (host side, on the bridge) is .1, pods from .2."""
        return ipaddress.IPv4Network(f"10.244.{self.index}.0/24")

    @property
    def service_cidr(self) -> ipaddress.IPv4Network:
        """10.96.N.0/24 - .1 is the `kubernetes` Service; ClusterIPs live on the bridge."""
        return ipaddress.IPv4Network(f"10.96.{self.index}.0/24")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address + 1

    @property
    def kubernetes_service_ip(self) -> ipaddress.IPv4Address:
        return self.service_cidr.network_address + 1

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.prefix
