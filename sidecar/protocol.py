"""The contract between bridge's agent and the sidecar, written down once.

The agent (``bridge/``) may import this module; the sidecar depends on nothing
of ``bridge/``. Any change to the shapes below that an older peer could not
understand bumps ``PROTOCOL_VERSION``.
"""

from __future__ import annotations

# Bumped whenever a command, JSON shape or setting changes incompatibly.
PROTOCOL_VERSION = 1
SIDECAR_VERSION = "0.1.0"

# Default image the proxy pod runs; the local test cluster maps it to `python -m sidecar`.
DEFAULT_IMAGE = "ghcr.io/bridge-k8s/sidecar:0.1.0"

# Settings, as environment variables of the proxy container.
ENV_AUTHORIZED_KEY = "BRIDGE_AUTHORIZED_KEY"  # one OpenSSH public-key line
ENV_PORTS = "BRIDGE_PORTS"  # comma-separated TCP ports remote forwards may bind
ENV_SSH_PORT = "BRIDGE_SSH_PORT"
ENV_HEALTH_PORT = "BRIDGE_HEALTH_PORT"
ENV_BIND = "BRIDGE_BIND"  # address the SSH server listens on
SETTINGS_PREFIX = "BRIDGE_"  # every setting starts with this; `env` hides them

DEFAULT_SSH_PORT = 8022
DEFAULT_HEALTH_PORT = 8023
DEFAULT_BIND = "127.0.0.1"

# Printed on stdout (hence in the pod log) before the server accepts connections:
#   host-key: ssh-ed25519 AAAA...
HOST_KEY_LOG_PREFIX = "host-key: "

# Commands (SSH "exec" requests). Each prints one JSON object on stdout, exits 0.
CMD_ENV = "env"  # {"NAME": "value", ...} minus BRIDGE_* settings
CMD_VERSION = "version"  # {"sidecar": SIDECAR_VERSION, "protocol": PROTOCOL_VERSION}
COMMANDS = (CMD_ENV, CMD_VERSION)

# Readiness HTTP endpoints on the health port.
READY_PATH = "/ready"  # 200 while an authenticated client holds a remote forward, else 503
HEALTH_PATH = "/healthz"  # 200 while the server runs
