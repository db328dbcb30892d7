"""The options of one `bridge swap` as the CLI gives them (checked and frozen into a
`SwapRequest` by bridge.swap.request before the session starts)."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field

from bridge.model import state
from sidecar import protocol


def default_owner() -> str:
    if os.environ.get("BRIDGE_OWNER"):
        return os.environ["BRIDGE_OWNER"]
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class SwapOptions:
    target: str
    command: tuple[str, ...] = ()
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    container: str | None = None
    ports: tuple[str, ...] = ()
    env_file: str | None = None
    env_json: str | None = None
    env_syntax: str = "dotenv"  # --env-syntax: how --env-file (or attach mode's file) is written
    sidecar_image: str = protocol.DEFAULT_IMAGE
    timeout: float = 120.0
    wait: bool = True
    heartbeat_interval: float = state.DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_ttl: float = state.DEFAULT_HEARTBEAT_TTL
    keepalive_interval: float = 5.0  # SSH keepalives; 3 missed ones end the connection
    owner: str = field(default_factory=default_owner)
    env_allow: tuple[str, ...] = ()  # pod variables taken although held back (trust)
    allow_host_access: bool = False  # allow templates with host namespaces (trust)
    outbound: str | None = None  # inject|proxy|none; None: inject if torsocks is on PATH
    forwards: tuple[str, ...] = ()  # --forward SERVICE:PORT[:LOCAL]
    mount_dir: str | None = None  # --mount DIR: the pod's files under DIR
    mount_mode: str | None = None  # --mount-mode auto|copy|live
    mount_rw: bool = False  # --mount-rw

