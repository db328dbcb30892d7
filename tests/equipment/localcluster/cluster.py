"""One local test cluster: store, node, API server and controllers, started and stopped in
order (claim index -> store -> node -> API server -> controllers -> kubeconfig)."""

from __future__ import annotations

import logging
import ssl
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import kubeconfig, network
from .apiserver import ApiServer, NodeLike
from .auth import ADMIN_GROUP, Authenticator
from .config import ClusterConfig
from .controllers import ControllerManager
from .pki import CertificateAuthority, write_pem
from .registry import Registry
from .store import Store

log = logging.getLogger("test-cluster")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def seed(registry: Registry, config: ClusterConfig) -> None:
    """Objects every cluster starts with: the default namespaces and the `kubernetes` Service."""
    for name in DEFAULT_NAMESPACES:
        registry.create("namespaces", None, {"metadata": {"name": name}})
    registry.create("services", "default", {
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver",
                                                      "provider": "kubernetes"}},
        "spec": {"clusterIP": str(config.kubernetes_service_ip),
                 "ports": [{"name": "https", "port": 443, "targetPort": 6443}]},
    })


class Cluster:
    def __init__(self, kubeconfig_path: Path, sidecar_image: str | None = None,
                 node_factory: Any = None) -> None:
        self.kubeconfig_path = kubeconfig_path
        self.sidecar_image = sidecar_image
        self._node_factory = node_factory
        self._lock_fd: int | None = None
        self.config: ClusterConfig | None = None
        self.node: Any = None
        self.api: ApiServer | None = None
        self.controllers: ControllerManager | None = None
        self.server = ""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def start(self) -> None:
        index, self._lock_fd = network.claim_index()
        config = ClusterConfig(index=index)
        if self.sidecar_image:
            config = replace(config, sidecar_image=self.sidecar_image)
        self.config = config
        store = Store()
        registry = Registry(store, config)
        seed(registry, config)
        if self._node_factory is not None:
            self.node = self._node_factory(store, config)
        else:
            from .node import Node
            self.node = Node(store, config)
        await self.node.start()

        ca = CertificateAuthority()
        gateway = str(config.gateway)
        server_pem = ca.server_cert(
            ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"],
            ["127.0.0.1", gateway, str(config.kubernetes_service_ip)])
        client_pem = ca.client_cert("admin-cert", (ADMIN_GROUP,))
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{config.prefix}-pki-")
        pki_dir = Path(self._tmp.name)
        (pki_dir / "ca.crt").write_bytes(ca.cert_pem)
        cert_path, key_path = write_pem(pki_dir, "apiserver", server_pem)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_path, key_path)
        ctx.load_verify_locations(pki_dir / "ca.crt")
        ctx.verify_mode = ssl.CERT_OPTIONAL

        auth = Authenticator()
        node: NodeLike = self.node
        self.api = ApiServer(store, registry, auth, node)
        hosts = [config.api_host, gateway]
        port = await self.api.listen(hosts, config.api_port, ctx)
        self.api.server_address = f"{gateway}:{port}"
        self.server = f"https://{config.api_host}:{port}"

        self.controllers = ControllerManager(registry)
        svc = store.get("services", "default", "kubernetes")
        svc["spec"]["ports"][0]["targetPort"] = port
        store.replace("services", svc)
        self.controllers.static_endpoints[("default", "kubernetes")] = {"subsets": [{
            "addresses": [{"ip": gateway}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}
        await self.controllers.start()
        self.controllers.endpoints.add("default", "kubernetes")

        kubeconfig.write(self.kubeconfig_path, kubeconfig.kubeconfig(
            self.server, ca.cert_pem, auth.admin_token, auth.restricted_token,
            client_pem.cert, client_pem.key, auth.least_token))

    async def stop(self) -> None:
        try:
            if self.api is not None:
                await self.api.close()
            if self.controllers is not None:
                await self.controllers.stop()
        finally:
            try:
                if self.node is not None:
                    await self.node.stop()
            finally:
                if self._tmp is not None:
                    self._tmp.cleanup()
                if self._lock_fd is not None:
                    network.release_index(self._lock_fd)
                    self._lock_fd = None
