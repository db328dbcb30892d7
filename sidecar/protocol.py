"""The contract between bridge's agent and the sidecar, written down once.

The agent (``bridge/``) may import this module; the sidecar depends on nothing
of ``bridge/``. Any change to the shapes below that an older peer could not
understand bumps ``PROTOCOL_VERSION``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar import headerrules

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


# --- Added for routing: several developers, header rules, mirroring (issue 20). ---
#
# The contract of docs/design/cluster-keeps-serving.md, section 10: the lease set's JSON, the
# routed commands and their replies, and the functions that read them. Used by the router and
# the lease phases, not wired yet: no sidecar serves these commands and no agent sends them, so
# PROTOCOL_VERSION stays 1 (the agent and the sidecar compare it for equality today, and an
# image built from this checkout would otherwise claim commands it does not have). The router's
# work item bumps PROTOCOL_VERSION to ROUTED_PROTOCOL_VERSION when it serves them, and the
# agent's version check moves to `accepts_protocol`.
#
# Everything here is read from the cluster (the router Deployment's template) or from a pod,
# and either may have been written by a neighbour: every reader bounds sizes before parsing,
# checks every type (a JSON `true` is not a port), refuses unknown and duplicate fields, and
# names what is wrong in one line with the offending text escaped (`LeaseSetError`,
# `ReplyError`). A lease set with a problem is never half-applied.

ROUTED_PROTOCOL_VERSION = 2  # the first version that serves the routed commands below
MIN_PROTOCOL_VERSION = 1  # the oldest sidecar an exclusive swap still works with


def accepts_protocol(theirs: object, *, routed: bool) -> bool:
    """Whether an agent of ROUTED_PROTOCOL_VERSION can use a sidecar reporting `theirs`: an
    exclusive swap works with every version from MIN_PROTOCOL_VERSION, a routed one (a header,
    a mirror, or a plain swap with an origin) needs the routed commands."""
    if not isinstance(theirs, int) or isinstance(theirs, bool):
        return False
    low = ROUTED_PROTOCOL_VERSION if routed else MIN_PROTOCOL_VERSION
    return low <= theirs <= ROUTED_PROTOCOL_VERSION


# Settings of the router container (routed mode).
ENV_MODE = "BRIDGE_MODE"
MODE_EXCLUSIVE = "exclusive"  # today's behaviour, and the default when ENV_MODE is unset
MODE_ROUTED = "routed"
MODES = (MODE_EXCLUSIVE, MODE_ROUTED)
# Routed: the lease set (JSON, `encode_leases`); it replaces ENV_AUTHORIZED_KEY (one key a lease).
ENV_LEASES = "BRIDGE_LEASES"
ENV_ORIGIN = "BRIDGE_ORIGIN"  # routed: the origin Service's name, resolved by the pod
ENV_HTTP_PORTS = "BRIDGE_HTTP_PORTS"  # comma-separated ports routed per request (h11/h2)
ENV_OPEN_TIMEOUT = "BRIDGE_OPEN_TIMEOUT"  # seconds a laptop may take to answer
DEFAULT_OPEN_TIMEOUT = 2.0
ENV_LEASE_TTL = "BRIDGE_LEASE_TTL"  # seconds an AWAY lease may come back (router's clock)
DEFAULT_LEASE_TTL = 60.0
ENV_MIRROR_BUFFER = "BRIDGE_MIRROR_BUFFER"  # bytes of copies queued per mirror lease
DEFAULT_MIRROR_BUFFER = 1024 * 1024
MIRROR_MAX_QUEUED = 256  # requests queued per mirror lease, whatever their size
MIRROR_MAX_SENDING = 16  # copies being sent to one laptop at a time
ROUTED_KEEPALIVE_SECONDS = 2.0  # routed mode; KEEPALIVE_COUNT_MAX stays 3
MAX_HEADER_BYTES_ROUTED = 65536  # h11 max_incomplete_event_size; h2 max_header_list_size

# Bounds of the lease set. A bridge-written set stays far below MAX_LEASES_BYTES: a lease of
# 8 rules with 256-character values, an 80-character owner and 64 ports is about 7 KB.
MAX_LEASES = 16
MAX_RULES_PER_LEASE = headerrules.MAX_RULES
MAX_OWNER = 80  # characters
MAX_PORTS_PER_LEASE = 64
MAX_LEASES_BYTES = 128 * 1024  # of the JSON text, checked before it is parsed
MAX_STARTED_AT = 2**40  # seconds since the epoch (year 36812): display only, never compared
# The session id of a lease: what bridge.model.state.SESSION_FORMAT accepts (the sidecar
# imports nothing of bridge; tests/unit/model/test_leases.py holds the two equal). It also
# names the lease's beat annotation, so it must stay a valid annotation-name part.
SESSION_PATTERN = re.compile(r"[a-z0-9]{1,20}\Z")

KIND_STEAL = "steal"  # the lease takes the requests its rules match (all of them: no rules)
KIND_MIRROR = "mirror"  # the lease gets a copy; the request is routed as if it did not exist
KINDS = (KIND_STEAL, KIND_MIRROR)

# A lease's key: exactly "ssh-ed25519 " and the base64 of the 51-byte SSH wire blob (string
# "ssh-ed25519", string of the 32-byte point), no comment: one spelling per key, so two leases
# cannot carry one key written two ways.
KEY_TYPE = "ssh-ed25519"
_KEY_BLOB_HEAD = len(KEY_TYPE).to_bytes(4, "big") + KEY_TYPE.encode() + (32).to_bytes(4, "big")
_KEY_BASE64 = re.compile(r"[A-Za-z0-9+/]{68}\Z")

LEASE_FIELDS = ("session", "owner", "kind", "rules", "key", "ports", "started_at")


class LeaseSetError(ValueError):
    """A lease set (or one lease) that must not be acted on; the message is one line naming
    the lease and the fault, with anything read from the cluster escaped."""


@dataclass(frozen=True)
class Lease:
    """One developer's intercept as the router's template carries it (section 8.1)."""

    session: str
    owner: str  # printable, for people only
    kind: str  # KIND_STEAL | KIND_MIRROR
    rules: tuple[headerrules.Rule, ...]  # all must match; none: every request
    key: str  # "ssh-ed25519 BASE64": the only key the router accepts for this lease
    ports: tuple[int, ...]  # the target ports this lease may take (sorted, distinct)
    started_at: int  # the joiner's clock, seconds since the epoch: shown, never compared

    @property
    def catch_all(self) -> bool:
        """A plain swap: a steal lease with no rules takes every request no rule lease takes."""
        return self.kind == KIND_STEAL and not self.rules

    def rule_set(self) -> frozenset[headerrules.Rule]:
        return frozenset(self.rules)

    def as_json(self) -> dict[str, object]:
        return {"session": self.session, "owner": self.owner, "kind": self.kind,
                "rules": [r.as_list() for r in self.rules], "key": self.key,
                "ports": list(self.ports), "started_at": self.started_at}


def shown(text: object, limit: int = 40) -> str:
    """`text` from the cluster, safe in a one-line message: repr (control, bidi and other
    non-printable characters escaped), cut to `limit` characters of the original."""
    if isinstance(text, str):
        return repr(text[:limit]) + ("..." if len(text) > limit else "")
    return type(text).__name__


def valid_key(key: object) -> bool:
    """Whether `key` is an ed25519 public key in the one spelling a lease carries."""
    if not isinstance(key, str) or not key.startswith(KEY_TYPE + " "):
        return False
    b64 = key[len(KEY_TYPE) + 1:]
    if not _KEY_BASE64.match(b64):
        return False
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(blob) == 51 and blob.startswith(_KEY_BLOB_HEAD)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _printable(text: str) -> bool:
    return text.isprintable()


def lease_from_json(item: object, where: str = "lease") -> Lease:
    """One lease from its JSON object; LeaseSetError names the first fault."""
    if not isinstance(item, dict):
        raise LeaseSetError(f"{where}: not a JSON object")
    unknown = sorted(k for k in item if k not in LEASE_FIELDS)
    if unknown:
        raise LeaseSetError(f"{where}: unknown field {shown(unknown[0])}")
    missing = [k for k in LEASE_FIELDS if k not in item]
    if missing:
        raise LeaseSetError(f"{where}: field {missing[0]} is missing")
    session = item["session"]
    if not isinstance(session, str) or not SESSION_PATTERN.match(session):
        raise LeaseSetError(f"{where}: session {shown(session)} is not a session id bridge "
                            "writes")
    where = f"lease {session}"
    owner = item["owner"]
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER \
            or not _printable(owner):
        raise LeaseSetError(f"{where}: owner {shown(owner)} is not printable text of 1 to "
                            f"{MAX_OWNER} characters")
    kind = item["kind"]
    if kind not in KINDS or not isinstance(kind, str):
        raise LeaseSetError(f"{where}: kind {shown(kind)} is not one of {', '.join(KINDS)}")
    try:
        rules = headerrules.rules_from_lists(item["rules"])
    except headerrules.HeaderRuleError as e:
        raise LeaseSetError(f"{where}: {e}") from None
    if len(set(rules)) != len(rules):
        raise LeaseSetError(f"{where}: a header rule is given twice")
    key = item["key"]
    if not valid_key(key):
        raise LeaseSetError(f"{where}: key {shown(key)} is not an ssh-ed25519 public key "
                            "(\"ssh-ed25519 BASE64\", no comment)")
    ports = item["ports"]
    if not isinstance(ports, list) or len(ports) > MAX_PORTS_PER_LEASE \
            or not all(_is_int(p) and 1 <= p <= 65535 for p in ports):
        raise LeaseSetError(f"{where}: ports must be a list of at most {MAX_PORTS_PER_LEASE} "
                            "TCP ports (1-65535)")
    if len(set(ports)) != len(ports):
        raise LeaseSetError(f"{where}: a port is listed twice")
    started_at = item["started_at"]
    if not _is_int(started_at) or not 0 <= started_at < MAX_STARTED_AT:
        raise LeaseSetError(f"{where}: started_at {shown(str(started_at))} is not a time "
                            "(seconds since the epoch)")
    return Lease(session, owner, kind, rules, key, tuple(sorted(ports)), started_at)


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise LeaseSetError(f"field {shown(k)} appears twice in one object")
        out[k] = v
    return out


def _refuse_constant(name: str) -> object:
    raise LeaseSetError(f"{name} is not a JSON number bridge writes")


def load_json(text: object, limit: int, what: str) -> object:
    """JSON read from the cluster or a pod: bounded before parsing, no duplicate keys (a
    reader must not pick one of two values another reader would not), no NaN/Infinity.
    LeaseSetError for anything else."""
    if isinstance(text, bytes):
        if len(text) > limit:
            raise LeaseSetError(f"{what} is longer than {limit} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise LeaseSetError(f"{what} is not UTF-8") from None
    if not isinstance(text, str):
        raise LeaseSetError(f"{what} is not text")
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        raise LeaseSetError(f"{what} is longer than {limit} bytes")
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicate_keys,
                          parse_constant=_refuse_constant)
    except LeaseSetError as e:
        raise LeaseSetError(f"{what}: {e}") from None
    except RecursionError:
        raise LeaseSetError(f"{what} is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() of more digits than Python reads
        raise LeaseSetError(f"{what} is not JSON ({' '.join(str(e).split())[:80]})") from None


def check_lease_set(leases: Sequence[Lease]) -> None:
    """The rules a whole set obeys: at most MAX_LEASES; one lease a session and a key (the
    router tells leases apart by the key a laptop authenticates with, the agent by its session
    id); at most one catch-all steal lease; no two steal leases with the same rule set (one
    would never get a request)."""
    if len(leases) > MAX_LEASES:
        raise LeaseSetError(f"{len(leases)} leases; at most {MAX_LEASES}")
    sessions: set[str] = set()
    keys: set[str] = set()
    steals: dict[frozenset[headerrules.Rule], Lease] = {}
    for lease in leases:
        if lease.session in sessions:
            raise LeaseSetError(f"lease {lease.session} appears twice")
        if lease.key in keys:
            raise LeaseSetError(f"lease {lease.session} carries the key of another lease")
        sessions.add(lease.session)
        keys.add(lease.key)
        if lease.kind == KIND_STEAL:
            other = steals.get(lease.rule_set())
            if other is not None and lease.catch_all:
                raise LeaseSetError(f"lease {lease.session} is a second catch-all (a plain swap) "
                                    f"beside lease {other.session}")
            if other is not None:
                raise LeaseSetError(f"lease {lease.session} has the same header rules as lease "
                                    f"{other.session} (one of them would never get a request)")
            steals[lease.rule_set()] = lease


def decode_leases(text: object) -> tuple[Lease, ...]:
    """The lease set from ENV_LEASES (read by the router at start, and by every agent from the
    router Deployment's template). LeaseSetError: not acted on, only reported."""
    items = load_json(text, MAX_LEASES_BYTES, ENV_LEASES)
    if not isinstance(items, list):
        raise LeaseSetError(f"{ENV_LEASES} is not a JSON list")
    if len(items) > MAX_LEASES:
        raise LeaseSetError(f"{ENV_LEASES}: {len(items)} leases; at most {MAX_LEASES}")
    leases = tuple(lease_from_json(item, f"{ENV_LEASES} item {i}")
                   for i, item in enumerate(items))
    check_lease_set(leases)
    return leases


def encode_leases(leases: Sequence[Lease]) -> str:
    """ENV_LEASES for a lease set (checked first: bridge never writes a set it would refuse)."""
    check_lease_set(leases)
    text = json.dumps([lease.as_json() for lease in leases], separators=(",", ":"),
                      ensure_ascii=True)
    if len(text) > MAX_LEASES_BYTES:
        raise LeaseSetError(f"{ENV_LEASES} would be {len(text)} bytes; at most "
                            f"{MAX_LEASES_BYTES}")
    return text


# Which lease gets a request (section 8.4): the contract both sides share, the router to route
# and the agent to explain (shadowed requests, `bridge status`).


def precedence(leases: Iterable[Lease]) -> tuple[Lease, ...]:
    """The steal leases in the order a request is offered to them: leases with rules first, more
    rules before fewer, equal counts in the set's own order (joins append, so the earlier join
    wins); the catch-all last. Mirror leases are not in it (each matching one gets a copy).
    The order never depends on `started_at`: that is a laptop's clock."""
    steals = [(i, lease) for i, lease in enumerate(leases) if lease.kind == KIND_STEAL]
    steals.sort(key=lambda il: (il[1].catch_all, -len(il[1].rules), il[0]))
    return tuple(lease for _, lease in steals)


@dataclass(frozen=True)
class Choice:
    """Where one request (HTTP/1.1) or stream (h2) goes."""

    steal: Lease | None  # None: the origin
    shadowed: tuple[Lease, ...]  # usable steal leases that matched too and lost (counted)
    mirrors: tuple[Lease, ...]  # usable mirror leases that get a copy
    fell_back: tuple[Lease, ...]  # matching steal leases passed over as not usable


def choose(leases: Sequence[Lease], headers: Iterable[tuple[bytes | str, bytes | str]],
           usable: frozenset[str]) -> Choice:
    """The lease a request goes to. `usable`: the sessions whose laptop may get it now (ACTIVE,
    section 8.6; a SUSPECT, AWAY or detached lease is not); a matching lease that is not
    usable is passed over (its requests fall back, to a later lease or the origin)."""
    fields = list(headers)
    steal: Lease | None = None
    shadowed: list[Lease] = []
    fell_back: list[Lease] = []
    for lease in precedence(leases):
        if not headerrules.matches(lease.rules, fields):
            continue
        if lease.session not in usable:
            fell_back.append(lease)
        elif steal is None:
            steal = lease
        elif not lease.catch_all:  # the catch-all matches everything: nothing to tell
            shadowed.append(lease)
    mirrors = tuple(lease for lease in leases if lease.kind == KIND_MIRROR
                    and lease.session in usable and headerrules.matches(lease.rules, fields))
    return Choice(steal, tuple(shadowed), mirrors, tuple(fell_back))


# The routed commands (SSH exec on the connection that authenticated with a lease's key). Each
# prints one JSON object on stdout and exits 0 unless said otherwise; a refusal exits 1 with
# {"error": TEXT, "kind": REASON}. In routed mode CMD_WITHDRAW means CMD_DETACH.
CMD_ATTACH = "attach"  # this connection's lease takes traffic -> {"state": "ACTIVE"}
CMD_DETACH = "detach"  # no new requests to it; in-flight ones finish -> {"state": "LEAVING"}
CMD_LEASES = "leases"  # the router's view: see `leases_reply`
CMD_ORIGIN_CHECK = "origin-check"  # {"ports": {"8080": "ok", "9090": "refused: ..."}}; exit 1
#                                    when a port failed (the text: `open_failure` style)
ROUTED_COMMANDS = (CMD_ATTACH, CMD_DETACH, CMD_LEASES, CMD_ORIGIN_CHECK)
ORIGIN_OK = "ok"
# Added reason codes (the "kind" of a refusal, the first word of an origin-check failure):
REASON_NOT_HTTP = "not-http"  # origin-check: the port answered, but not HTTP (STRICT mTLS?)
REASON_NO_LEASE = "no-lease"  # attach/detach: this connection's key has no lease (any more)
ROUTED_REASONS = (REASON_NOT_HTTP, REASON_NO_LEASE)

# A lease's state as the router sees it (section 8.6). JOINING: in the set, never connected.
STATE_JOINING = "JOINING"
STATE_ATTACHING = "ATTACHING"  # connected with its key, forwards registered, not attached
STATE_ACTIVE = "ACTIVE"
STATE_SUSPECT = "SUSPECT"  # a channel open timed out: its requests go to the origin
STATE_AWAY = "AWAY"  # connection gone; may come back within the TTL
STATE_EXPIRED = "EXPIRED"  # away longer than the TTL: its key is refused from now on
STATE_LEAVING = "LEAVING"  # detached: no new requests, in-flight ones finish
ROUTER_STATES = (STATE_JOINING, STATE_ATTACHING, STATE_ACTIVE, STATE_SUSPECT, STATE_AWAY,
                 STATE_EXPIRED, STATE_LEAVING)

MAX_REPLY_BYTES = 256 * 1024  # of a routed command's stdout, read by the agent
MAX_COUNTER = 2**63 - 1
LEASE_COUNTERS = ("routed", "mirrored", "mirror_dropped", "shadowed", "fell_back")
MAX_ERROR_TEXT = 200  # characters of a refusal's or a port failure's text


class ReplyError(ValueError):
    """A reply of the router that is not what this contract says (one line, escaped)."""


def _counter(x: object, what: str) -> int:
    if isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_COUNTER:
        return x
    raise ReplyError(f"{what} is not a counter")


def _load_reply(text: object, command: str) -> object:
    try:
        return load_json(text, MAX_REPLY_BYTES, f"the reply to {command}")
    except LeaseSetError as e:
        raise ReplyError(str(e)) from None


def state_reply(state: str) -> dict[str, object]:
    """attach / detach, accepted."""
    return {"state": state}


def refusal_reply(kind: str, text: str) -> dict[str, object]:
    """attach / detach / origin-check refused (exit 1)."""
    return {"error": text[:MAX_ERROR_TEXT], "kind": kind}


def parse_state_reply(text: object, command: str) -> str:
    """The state an attach or detach left the lease in; ReplyError for anything else (a
    refusal included: its text, escaped, is in the message)."""
    obj = _load_reply(text, command)
    if isinstance(obj, dict) and set(obj) == {"error", "kind"}:
        kind, error = obj["kind"], obj["error"]
        code = kind if kind in REASONS + ROUTED_REASONS else REASON_FAILED
        raise ReplyError(f"{command} refused ({code}): {shown(error, MAX_ERROR_TEXT)}")
    if not isinstance(obj, dict) or set(obj) != {"state"} or obj["state"] not in ROUTER_STATES:
        raise ReplyError(f"the reply to {command} is not {{\"state\": STATE}}")
    return str(obj["state"])


@dataclass(frozen=True)
class LeaseView:
    """One lease in the router's view: its state and counters since the router started."""

    session: str
    state: str
    routed: int = 0
    mirrored: int = 0
    mirror_dropped: int = 0
    shadowed: int = 0
    fell_back: int = 0


@dataclass(frozen=True)
class RouterView:
    """The reply to CMD_LEASES."""

    leases: tuple[LeaseView, ...]
    origin_addresses: int  # origin pods the router resolved last
    origin_errors: int  # failed connections to origin pods since start
    unmatched: int  # requests no lease took (answered by the origin)


def leases_reply(view: RouterView) -> dict[str, object]:
    return {"leases": [{"session": v.session, "state": v.state,
                        **{c: getattr(v, c) for c in LEASE_COUNTERS}} for v in view.leases],
            "origin": {"addresses": view.origin_addresses, "errors": view.origin_errors},
            "unmatched": view.unmatched}


def parse_leases_reply(text: object) -> RouterView:
    """The router's view, checked field by field (MAX_LEASES leases at most, known states,
    counters that are non-negative integers, no other fields)."""
    obj = _load_reply(text, CMD_LEASES)
    if not isinstance(obj, dict) or set(obj) != {"leases", "origin", "unmatched"}:
        raise ReplyError(f"the reply to {CMD_LEASES} has other fields than leases, origin, "
                         "unmatched")
    items, origin = obj["leases"], obj["origin"]
    if not isinstance(items, list) or len(items) > MAX_LEASES:
        raise ReplyError(f"the reply to {CMD_LEASES}: leases is not a list of at most "
                         f"{MAX_LEASES}")
    views = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or set(item) != {"session", "state", *LEASE_COUNTERS}:
            raise ReplyError(f"the reply to {CMD_LEASES}: a lease has other fields than "
                             "session, state, " + ", ".join(LEASE_COUNTERS))
        session, state = item["session"], item["state"]
        if not isinstance(session, str) or not SESSION_PATTERN.match(session) \
                or session in seen:
            raise ReplyError(f"the reply to {CMD_LEASES}: session {shown(session)} is not a "
                             "session id, or appears twice")
        if state not in ROUTER_STATES or not isinstance(state, str):
            raise ReplyError(f"the reply to {CMD_LEASES}: state {shown(state)} is not a lease "
                             "state")
        seen.add(session)
        counts = {c: _counter(item[c], f"the reply to {CMD_LEASES}: {c}")
                  for c in LEASE_COUNTERS}
        views.append(LeaseView(session, state, **counts))
    if not isinstance(origin, dict) or set(origin) != {"addresses", "errors"}:
        raise ReplyError(f"the reply to {CMD_LEASES}: origin is not {{addresses, errors}}")
    return RouterView(tuple(views),
                      _counter(origin["addresses"], f"the reply to {CMD_LEASES}: addresses"),
                      _counter(origin["errors"], f"the reply to {CMD_LEASES}: errors"),
                      _counter(obj["unmatched"], f"the reply to {CMD_LEASES}: unmatched"))


def origin_check_reply(results: dict[int, str]) -> dict[str, object]:
    """{port: ORIGIN_OK or `open_failure`-style text}; the command exits 1 unless all ok."""
    return {"ports": {str(p): r[:MAX_ERROR_TEXT] for p, r in sorted(results.items())}}


def parse_origin_check_reply(text: object) -> dict[int, tuple[str | None, str]]:
    """{port: (None, "ok") when the origin answered, else (reason code or None, the pod's
    words: escape them before printing)}, for at most MAX_PORTS_PER_LEASE ports."""
    obj = _load_reply(text, CMD_ORIGIN_CHECK)
    if not isinstance(obj, dict) or set(obj) != {"ports"} or not isinstance(obj["ports"], dict) \
            or len(obj["ports"]) > MAX_PORTS_PER_LEASE:
        raise ReplyError(f"the reply to {CMD_ORIGIN_CHECK} is not {{\"ports\": {{PORT: "
                         f"RESULT}}}} for at most {MAX_PORTS_PER_LEASE} ports")
    out: dict[int, tuple[str | None, str]] = {}
    for port_text, result in obj["ports"].items():
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
                and 1 <= int(port_text) <= 65535 and str(int(port_text)) == port_text):
            raise ReplyError(f"the reply to {CMD_ORIGIN_CHECK}: {shown(port_text)} is not a "
                             "port")
        if not isinstance(result, str) or len(result) > MAX_ERROR_TEXT:
            raise ReplyError(f"the reply to {CMD_ORIGIN_CHECK}: the result of port "
                             f"{port_text} is not text of at most {MAX_ERROR_TEXT} characters")
        if result == ORIGIN_OK:
            out[int(port_text)] = (None, ORIGIN_OK)
            continue
        code, words = open_reason(result)
        if code is None:
            head = result.partition(OPEN_REASON_SEPARATOR)[0]
            code = head if head in ROUTED_REASONS else None
        out[int(port_text)] = (code, words)
    return out
