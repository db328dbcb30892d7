"""The sidecar's settings, read from environment variables (a pure function of a mapping)."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass

import asyncssh

from sidecar import files, protocol


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line for the user."""


@dataclass(frozen=True)
class Settings:
    authorized_key: asyncssh.SSHKey
    ports: frozenset[int]
    ssh_port: int
    health_port: int
    bind: str
    drain_seconds: float
    keepalive_seconds: float
    direct_tcpip: bool = True  # False: every direct-tcpip channel is refused
    mounts: tuple[files.Mount, ...] = ()  # served over SFTP (issue 15)


def _port(name: str, raw: str) -> int:
    text = raw.strip()
    if not text.isdigit():
        raise SettingsError(f"{name} must be a TCP port number (1-65535), got {raw!r}")
    value = int(text)
    if not 1 <= value <= 65535:
        raise SettingsError(f"{name} must be a TCP port number (1-65535), got {raw!r}")
    return value


def _optional_port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return default if raw is None or raw.strip() == "" else _port(name, raw)


def parse_ports(raw: str) -> frozenset[int]:
    """`"8080, 9090"` -> {8080, 9090}; empty means no remote forwards are allowed."""
    ports: set[int] = set()
    for item in raw.split(","):
        if item.strip() == "":
            continue
        ports.add(_port(f"{protocol.ENV_PORTS} entry", item))
    return frozenset(ports)


def parse_authorized_key(raw: str) -> asyncssh.SSHKey:
    """One OpenSSH public-key line, e.g. `ssh-ed25519 AAAA... comment`.

    The value never appears in the error: a user may paste a private key by mistake.
    """
    line = raw.strip()
    if line == "":
        raise SettingsError(f"{protocol.ENV_AUTHORIZED_KEY} is empty; set one OpenSSH public key")
    if "\n" in line:
        raise SettingsError(
            f"{protocol.ENV_AUTHORIZED_KEY} must be a single OpenSSH public-key line, "
            "got several lines"
        )
    if "PRIVATE KEY" in line:
        raise SettingsError(
            f"{protocol.ENV_AUTHORIZED_KEY} holds a private key; pass only the public half"
        )
    try:
        return asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise SettingsError(
            f"{protocol.ENV_AUTHORIZED_KEY} is not an OpenSSH public-key line "
            f"('ssh-ed25519 AAAA...'): {exc}"
        ) from None


def parse_bind(raw: str) -> str:
    text = raw.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SettingsError(
            f"{protocol.ENV_BIND} must be an IP address such as 127.0.0.1 or ::1, got {raw!r}"
        ) from None


def parse_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


def _optional_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    return default if raw.strip() == "" else parse_seconds(name, raw)


def parse_switch(name: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise SettingsError(f"{name} must be on or off, got {raw!r}")


def load(env: Mapping[str, str]) -> Settings:
    """Build settings from an environment mapping; raise SettingsError on the first problem."""
    key_raw = env.get(protocol.ENV_AUTHORIZED_KEY)
    if key_raw is None:
        raise SettingsError(
            f"{protocol.ENV_AUTHORIZED_KEY} is not set; "
            "it must hold the one OpenSSH public key allowed to log in"
        )
    ports_raw = env.get(protocol.ENV_PORTS)
    if ports_raw is None:
        raise SettingsError(
            f"{protocol.ENV_PORTS} is not set; it must list the TCP ports remote forwards may "
            "bind (comma-separated, may be empty)"
        )
    authorized_key = parse_authorized_key(key_raw)
    ports = parse_ports(ports_raw)
    ssh_port = _optional_port(env, protocol.ENV_SSH_PORT, protocol.DEFAULT_SSH_PORT)
    health_port = _optional_port(env, protocol.ENV_HEALTH_PORT, protocol.DEFAULT_HEALTH_PORT)
    bind_raw = env.get(protocol.ENV_BIND, "")
    bind = protocol.DEFAULT_BIND if bind_raw.strip() == "" else parse_bind(bind_raw)
    drain = _optional_seconds(env, protocol.ENV_DRAIN_SECONDS, protocol.DEFAULT_DRAIN_SECONDS)
    keepalive = _optional_seconds(
        env, protocol.ENV_KEEPALIVE_SECONDS, protocol.DEFAULT_KEEPALIVE_SECONDS
    )
    direct_raw = env.get(protocol.ENV_DIRECT_TCPIP, "")
    direct = parse_switch(protocol.ENV_DIRECT_TCPIP,
                          direct_raw if direct_raw.strip() else protocol.DEFAULT_DIRECT_TCPIP)
    if keepalive == 0:
        raise SettingsError(
            f"{protocol.ENV_KEEPALIVE_SECONDS} must be > 0; a vanished client would hold "
            "its ports for ever"
        )
    if ssh_port == health_port:
        raise SettingsError(
            f"{protocol.ENV_SSH_PORT} and {protocol.ENV_HEALTH_PORT} are both {ssh_port}; "
            "they must differ"
        )
    for own, name in ((ssh_port, protocol.ENV_SSH_PORT), (health_port, protocol.ENV_HEALTH_PORT)):
        if own in ports:
            raise SettingsError(
                f"{protocol.ENV_PORTS} includes {own}, which the sidecar itself uses "
                f"({name}); choose another {name}"
            )
    try:  # the pod's files (issue 15)
        mounts = files.parse_mounts(env.get(protocol.ENV_MOUNTS, ""))
    except ValueError as exc:
        raise SettingsError(f"{protocol.ENV_MOUNTS} {exc}") from None
    return Settings(
        authorized_key=authorized_key,
        ports=ports,
        ssh_port=ssh_port,
        health_port=health_port,
        bind=bind,
        drain_seconds=drain,
        keepalive_seconds=keepalive,
        direct_tcpip=direct,
        mounts=mounts,
    )
