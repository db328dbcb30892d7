"""The kubeconfig the test cluster writes: one cluster, four users and contexts."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

CLUSTER = "bridge-test"
CONTEXT_ADMIN = "bridge-test"  # bearer-token admin, the current-context
CONTEXT_CERT = "bridge-test-cert"  # client-certificate admin
CONTEXT_RESTRICTED = "bridge-test-restricted"  # token; get/list/watch only
CONTEXT_LEAST = "bridge-test-least"  # token; exactly the README's Role for bridge


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(server: str, ca_pem: bytes, admin_token: str, restricted_token: str,
               client_cert: bytes, client_key: bytes, least_token: str) -> dict[str, Any]:
    def context(name: str, user: str) -> dict[str, Any]:
        return {"name": name, "context": {"cluster": CLUSTER, "user": user,
                                          "namespace": "default"}}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": CLUSTER, "cluster": {
            "server": server, "certificate-authority-data": _b64(ca_pem)}}],
        "users": [
            {"name": "admin", "user": {"token": admin_token}},
            {"name": "admin-cert", "user": {"client-certificate-data": _b64(client_cert),
                                            "client-key-data": _b64(client_key)}},
            {"name": "restricted", "user": {"token": restricted_token}},
            {"name": "bridge-user", "user": {"token": least_token}},
        ],
        "contexts": [context(CONTEXT_ADMIN, "admin"), context(CONTEXT_CERT, "admin-cert"),
                     context(CONTEXT_RESTRICTED, "restricted"),
                     context(CONTEXT_LEAST, "bridge-user")],
        "current-context": CONTEXT_ADMIN,
    }


def write(path: Path, config: dict[str, Any]) -> None:
    """Write atomically with mode 0600 (it holds credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(tmp, path)
