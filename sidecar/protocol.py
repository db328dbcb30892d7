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
# The app's value of a variable the sidecar's own process must not run with (LD_PRELOAD,
# PYTHONPATH...): the plan blanks the variable and keeps the app's value under this prefix
# (`$(NAME)`, expanded by the kubelet; the literal `$(NAME)` when the app has none); `env`
# serves it under its own name again (sidecar.podenv).
SHIELD_PREFIX = "BRIDGE_APPENV_"

DEFAULT_SSH_PORT = 8022
DEFAULT_HEALTH_PORT = 8023
DEFAULT_BIND = "127.0.0.1"

# Printed on stdout (hence in the pod log) before the server accepts connections:
#   host-key: ssh-ed25519 AAAA...
HOST_KEY_LOG_PREFIX = "host-key: "

# Commands (SSH "exec" requests). Each prints one JSON object on stdout, exits 0.
CMD_ENV = "env"  # {"NAME": "value", ...} minus BRIDGE_* settings
CMD_VERSION = "version"  # {"sidecar": SIDECAR_VERSION, "protocol": PROTOCOL_VERSION}
# The hand-back: /ready answers 503 from now on while every forward keeps working, so the pod
# leaves the Service endpoints before the laptop process stops. Replies {"ready": false}.
CMD_WITHDRAW = "withdraw"
# Added for outbound (issue 10): name look-ups with the pod's resolver, see sidecar/resolve.py.
#   "resolve NAME"        -> {"addresses": ["10.96.0.10", ...]} | {"error": "...", "kind": K}
#   "resolve-ptr ADDRESS" -> {"names": ["host"]} | {"error": "...", "kind": K}
# K is REASON_NXDOMAIN, REASON_TIMEOUT, REASON_FAILED (exit 0) or REASON_INVALID (exit 1),
# see "Reason codes" below. An older sidecar answers exit 127 (unknown command): the agent
# then has no in-pod name resolution.
CMD_RESOLVE = "resolve"
CMD_RESOLVE_PTR = "resolve-ptr"
COMMANDS = (CMD_ENV, CMD_VERSION, CMD_WITHDRAW, CMD_RESOLVE, CMD_RESOLVE_PTR)

# Readiness HTTP endpoints on the health port.
READY_PATH = "/ready"  # 200 while an authenticated client holds a remote forward, else 503
HEALTH_PATH = "/healthz"  # 200 while the server runs

# --- Added by the sidecar (issue 3); names above are unchanged. ---

# How long SIGTERM waits for open forwarded TCP connections to finish before
# disconnecting clients (seconds, a float >= 0).
ENV_DRAIN_SECONDS = "BRIDGE_DRAIN_SECONDS"
DEFAULT_DRAIN_SECONDS = 2.0

# Seconds between SSH keepalives the sidecar sends; a client that misses
# KEEPALIVE_COUNT_MAX of them in a row is dropped and its ports are freed, so a
# laptop that vanished without closing does not hold its ports for long.
ENV_KEEPALIVE_SECONDS = "BRIDGE_KEEPALIVE_SECONDS"
DEFAULT_KEEPALIVE_SECONDS = 5.0
KEEPALIVE_COUNT_MAX = 3

# `/ready` when BRIDGE_PORTS is empty (a workload with no ports): 200 while an
# authenticated client is connected, since there is no forward to hold.

# Flow control for TCP forward channels. The sidecar sets these on every
# forwarded-tcpip / direct-tcpip channel it opens or accepts; the agent should
# pass the same `window=` / `max_pktsize=` to its own forward calls, because the
# receiving side's window decides throughput in each direction.
# (OpenSSH uses 2 MiB / 32 KiB; a larger window keeps a high-latency tunnel busy.)
# Measured with scripts/tune-tunnel (CPU seconds per GiB through sidecar + agent, median of
# 7 interleaved rounds): 32 KiB packets 4.2; 64 KiB on either side 5.1-5.7; 4 MiB and 2 MiB
# windows cost the same CPU, 4 MiB keeps a long-latency path busier.
FORWARD_WINDOW = 4 * 1024 * 1024
FORWARD_MAX_PKTSIZE = 32 * 1024

# Ciphers the sidecar offers. SSH picks the first of the *client's* list that the
# server also offers, so offering only AES-GCM is what makes a stock OpenSSH
# client (chacha20 first by default) use it: about 2x the throughput of
# chacha20-poly1305 through asyncssh, measured here. Every OpenSSH since 6.2 has it.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

# --- Added for security (issue 13). ---

# Whether the sidecar opens direct-tcpip channels (the laptop's outbound connections leaving
# from the pod): "on" (default) or "off" (`bridge swap --outbound none`).
ENV_DIRECT_TCPIP = "BRIDGE_DIRECT_TCPIP"
DEFAULT_DIRECT_TCPIP = "on"

# Limits. Only the session key authenticates, so whoever is not yet authenticated is a
# stranger: few of them at a time, briefly. An authenticated client gets generous but bounded
# channels (the benchmark holds 1,000 concurrent forwarded connections).
MAX_PREAUTH_CONNECTIONS = 8
LOGIN_TIMEOUT_SECONDS = 10.0
MAX_SESSIONS_PER_CONNECTION = 16  # command channels open at once
MAX_DIRECT_PER_CONNECTION = 1024  # direct-tcpip channels open at once
MAX_FORWARDED_CONNECTIONS = 4096  # forwarded TCP connections open at once, all clients

# --- Added for the pod's files (issue 15). ---

# The volume mounts the sidecar serves over SFTP (the `sftp` subsystem of a session channel of
# the authenticated connection), as a JSON list: [{"path": "/etc/config", "writable": false}]
# ("source": where the sidecar reads it, default the path itself). Empty: no SFTP at all. A
# mount is writable only when the user asked for it and the volume mount is not read-only.
ENV_MOUNTS = "BRIDGE_MOUNTS"
# Where the laptop process finds the pod's files (their pod paths under it): set in its
# environment and in the env file, e.g. $BRIDGE_ROOT/etc/config/app.yaml.
ENV_ROOT = "BRIDGE_ROOT"

# --- Reason codes: why the pod could not do it (issue 22). ---

# One word each, for the agent to map once to its own errors (a SOCKS5 reply, an HTTP status)
# instead of searching the text for "refused". They are the "kind" of a failed resolve
# command, and the first word of the description of a direct-tcpip open that failed to
# connect (SSH code OPEN_CONNECT_FAILED):
#   "REASON: cannot connect to HOST:PORT: TEXT"   e.g. "refused: cannot connect to
#   10.96.0.7:80: Connection refused"
# TEXT is the pod's own words (strerror) for people; the code is the contract. A sidecar
# before these codes sent "cannot connect to HOST:PORT: TEXT": an agent finds no known code
# before the first ": " and falls back to TEXT (see OPEN_REASON_SEPARATOR). An older agent
# reads TEXT after the last ": " and still works, so the protocol version stays.
# Other open failures use SSH's own codes: OPEN_ADMINISTRATIVELY_PROHIBITED (outbound off,
# not authenticated) means REASON_NOT_ALLOWED, OPEN_RESOURCE_SHORTAGE (too many open
# connections) REASON_FAILED.
REASON_REFUSED = "refused"  # ECONNREFUSED: nothing listens there
REASON_TIMEOUT = "timeout"  # no answer in time (the connect, or the name look-up)
REASON_NET_UNREACHABLE = "net-unreachable"  # ENETUNREACH
REASON_HOST_UNREACHABLE = "host-unreachable"  # EHOSTUNREACH, EHOSTDOWN: no route to it
REASON_NXDOMAIN = "nxdomain"  # the name does not exist (for the pod's resolver)
REASON_INVALID = "invalid"  # the request was malformed (resolve: not a name or address)
REASON_NOT_ALLOWED = "not-allowed"  # the sidecar does not open it (outbound off)
REASON_FAILED = "failed"  # anything else (a DNS server failure, a reset, ...)
REASONS = (REASON_REFUSED, REASON_TIMEOUT, REASON_NET_UNREACHABLE, REASON_HOST_UNREACHABLE,
           REASON_NXDOMAIN, REASON_INVALID, REASON_NOT_ALLOWED, REASON_FAILED)
OPEN_REASON_SEPARATOR = ": "


def open_failure(reason: str, host_port: str, text: str) -> str:
    """The description of a direct-tcpip open that could not connect."""
    return f"{reason}{OPEN_REASON_SEPARATOR}cannot connect to {host_port}: {text}"


def open_reason(description: str) -> tuple[str | None, str]:
    """(reason code or None for a sidecar that sent none, the pod's own words)."""
    head, sep, rest = description.partition(OPEN_REASON_SEPARATOR)
    code = head if sep and head in REASONS else None
    # the pod's words are what follows the last ": " either way ("cannot connect to H:P: X")
    return code, description.rpartition(OPEN_REASON_SEPARATOR)[2] or description
