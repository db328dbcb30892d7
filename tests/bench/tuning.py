"""The settings ``scripts/bench --tuning`` sweeps over the loopback tunnel.

Each setting is a dict of keyword arguments for ``bridge.tunnel.Tunnel.connect``; a setting
the Tunnel does not accept is reported as such, never measured as a silent no-op.
"""

from __future__ import annotations

from typing import Any

SETTINGS: list[dict[str, Any]] = [
    {},  # the Tunnel's defaults
]
