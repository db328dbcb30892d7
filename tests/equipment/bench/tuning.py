"""The settings ``scripts/bench --tuning`` sweeps over the loopback tunnel, one knob at a time
from bridge's defaults (knobs in ``tests/equipment/bench/knobs.py``)."""

from __future__ import annotations

import importlib.util
from typing import Any

KiB = 1024
MiB = 1024 * KiB

SETTINGS: list[dict[str, Any]] = [
    {},  # bridge's defaults (sidecar.protocol: AES-GCM, 4 MiB windows, 32 KiB packets)
    {"cipher": "chacha20-poly1305@openssh.com"},
    {"cipher": "aes256-gcm@openssh.com"},
    {"cipher": "aes128-ctr"},
    {"window": 256 * KiB},
    {"window": 2 * MiB},  # OpenSSH's channel window
    {"window": 16 * MiB},
    {"pktsize": 16 * KiB},
    {"pktsize": 64 * KiB},
    {"pktsize": 256 * KiB},
    {"read_size": 64 * KiB},
    {"read_size": 1 * MiB},
    {"ssh_read_size": 64 * KiB},
    {"nodelay": False},
    {"ignore_packets": False},  # experiment: asyncssh without its per-packet SSH_MSG_IGNORE
    {"ssh_read_size": 64 * KiB, "ignore_packets": False},
]
if importlib.util.find_spec("uvloop") is not None:  # an experiment, when uvloop is there
    # uvloop in the agent only (the sidecar's own listeners do not run under uvloop)
    SETTINGS += [{"loop": "uvloop-agent"}]
