"""What `bridge swap` was asked to do: the options of one session."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field

from bridge.errors import BridgeError, NothingChanged
from bridge.model import state
from bridge.transport import outbound as outbound_mod
from sidecar import protocol


def default_owner() -> str:
    if os.environ.get("BRIDGE_OWNER"):
        return os.environ["BRIDGE_OWNER"]
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass
class SwapOptions:
    target: str
    command: list[str] = field(default_factory=list)
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


@dataclass(frozen=True)
class Asked:
    """What the options ask for beyond the swap itself, checked before anything changes (a
    user error here is `NothingChanged`): the outbound mode and --forward listeners, and
    whether (and how) the pod's files come to this machine."""

    outbound: outbound_mod.Mode
    forwards: tuple[outbound_mod.Forward, ...]
    files_mode: str | None  # "live" | "copy"; None: no files asked for
    files_note: str  # what to say when the files are provided
    hints: tuple[str, ...]  # warnings to show (e.g. no torsocks: proxy variables only)

    @property
    def direct_tcpip(self) -> bool:
        """Whether the sidecar must open connections from the pod: for the outbound modes, and
        for --forward listeners even with --outbound none."""
        return self.outbound is not outbound_mod.Mode.NONE or bool(self.forwards)


def preflight(o: SwapOptions) -> Asked:
    """The options' checks that need no cluster (torsocks, --forward, --mount, sshfs)."""
    try:
        mode, hint = outbound_mod.choose_mode(o.outbound, outbound_mod.find_torsocks())
        forwards = tuple(outbound_mod.parse_forward(f) for f in o.forwards)
        files_mode, files_note = files_asked(o)
    except NothingChanged:
        raise
    except BridgeError as e:  # its message says nothing was changed
        raise NothingChanged(str(e)) from None
    return Asked(mode, forwards, files_mode, files_note, (hint,) if hint else ())


def files_asked(o: SwapOptions) -> tuple[str | None, str]:
    """(mode, what to say) when the pod's files were asked for (--mount, --mount-mode,
    --mount-rw), else (None, ""). BridgeError for a bad --mount DIR or an impossible live
    mode."""
    from bridge.local import mounts

    if not (o.mount_dir or o.mount_mode or o.mount_rw):
        return None, ""
    problem = o.mount_dir and mounts.root_problem(o.mount_dir)
    if problem:
        raise NothingChanged(f"{problem}; nothing was changed")
    return mounts.choose_mode(o.mount_mode or "auto", mounts.live_problem())
