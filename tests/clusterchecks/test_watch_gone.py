"""The test cluster's answer to a watch from a resourceVersion older than its event log, checked
with the official client's `watch.Watch`, kubectl and bridge's own watch helper. Kubernetes
(v1.34, checked against the shared real cluster) answers 200 and one ERROR event carrying the
410 Expired Status, then ends the stream; the client's Watch turns that into ApiException(410)
and a list-then-watch client must list again. Runs the API server in-process with a tiny event
log so that it compacts after a few writes."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.equipment.localcluster import store as store_module
from tests.equipment.localcluster.apiserver import ApiServer
from tests.equipment.localcluster.auth import Authenticator
from tests.equipment.localcluster.cluster import seed
from tests.equipment.localcluster.config import ClusterConfig
from tests.equipment.localcluster.pki import CertificateAuthority, write_pem
from tests.equipment.localcluster.registry import Registry
from tests.equipment.localcluster.store import Store

NS = "default"


class Server:
    def __init__(self, url: str, ca: Path, token: str, registry: Registry,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.url, self.ca, self.token, self.registry, self.loop = url, ca, token, registry, loop

    def create(self, name: str) -> None:
        async def go() -> None:
            self.registry.create("configmaps", NS, {"metadata": {"name": name}, "data": {}})
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def configuration(self) -> client.Configuration:
        c = client.Configuration(host=self.url)
        c.ssl_ca_cert = str(self.ca)
        c.api_key = {"authorization": self.token}
        c.api_key_prefix = {"authorization": "Bearer"}
        return c

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": self.url,
                                                    "certificate-authority": str(self.ca)}}],
            "users": [{"name": "t", "user": {"token": self.token}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t",
                                                    "namespace": NS}}]}))
        return path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setattr(store_module, "EVENT_LOG_SIZE", 3)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory(prefix="watch-gone-") as tmp:
        config = ClusterConfig(index=0)
        store = Store()
        registry = Registry(store, config)
        ca = CertificateAuthority()
        cert, key = write_pem(Path(tmp), "apiserver", ca.server_cert(["localhost"],
                                                                      ["127.0.0.1"]))
        (Path(tmp) / "ca.crt").write_bytes(ca.cert_pem)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        auth = Authenticator()
        api = ApiServer(store, registry, auth, None)  # type: ignore[arg-type]

        async def start() -> int:
            seed(registry, config)
            return await api.listen(["127.0.0.1"], 0, ctx)
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        try:
            yield Server(f"https://127.0.0.1:{port}", Path(tmp) / "ca.crt", auth.admin_token,
                         registry, loop)
        finally:
            asyncio.run_coroutine_threadsafe(api.close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)


def compacted(server: Server) -> str:
    """A resourceVersion that was current once and is now older than the event log."""
    core = client.CoreV1Api(client.ApiClient(server.configuration()))
    old = core.list_namespaced_config_map(NS).metadata.resource_version
    for i in range(5):
        server.create(f"c{i}")
    return str(old)


def test_official_watch_raises_410_from_the_error_event(server: Server) -> None:
    old = compacted(server)
    core = client.CoreV1Api(client.ApiClient(server.configuration()))
    with pytest.raises(ApiException) as info:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, NS,
                                      resource_version=old, timeout_seconds=5):
            pass
    assert info.value.status == 410
    # the HTTP answer itself is 200 with the event, as Kubernetes' watch cache sends it
    resp = core.list_namespaced_config_map(NS, watch=True, resource_version=old,
                                           timeout_seconds=5, _preload_content=False)
    assert resp.status == 200
    lines = [json.loads(x) for x in resp.data.decode().splitlines() if x.strip()]
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in lines] == \
        [("ERROR", 410, "Expired")]


def test_kubectl_raw_watch_prints_the_error_event(server: Server, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl") or str(Path(__file__).resolve().parents[2] / ".venv" /
                                             "bin" / "kubectl")
    old = compacted(server)
    out = subprocess.run(
        [kubectl, "--kubeconfig", str(server.kubeconfig(tmp_path)), "get", "--raw",
         f"/api/v1/namespaces/{NS}/configmaps?watch=1&resourceVersion={old}&timeoutSeconds=5"],
        capture_output=True, text=True, timeout=30, check=True).stdout
    event = json.loads(out.splitlines()[0])
    assert event["type"] == "ERROR"
    assert (event["object"]["kind"], event["object"]["code"]) == ("Status", 410)


def test_bridge_watch_helper_lists_again_after_the_410_event(server: Server,
                                                              tmp_path: Path) -> None:
    from bridge.kube import client as kube

    old = compacted(server)
    seen: list[str] = []

    async def main() -> list[str]:
        k = await kube.Kube.connect(str(server.kubeconfig(tmp_path)))

        async def list_once() -> tuple[list[dict[str, Any]], str]:
            seen.append("list")
            r = await k.request("GET", f"/api/v1/namespaces/{NS}/configmaps")
            # the first list claims the compacted version: the watch must answer 410
            rv = old if seen.count("list") == 1 else r["metadata"]["resourceVersion"]
            return r["items"], rv

        def watch_once(rv: str, bound: float) -> Any:
            seen.append(f"watch {'old' if rv == old else 'new'}")
            return k.watch_events(f"/api/v1/namespaces/{NS}/configmaps", [], rv, bound)

        async def feed(publish: Any) -> None:
            await kube.follow(list_once, watch_once, publish)

        async def after_relist(objs: list[dict[str, Any]]) -> list[str] | None:
            return seen if seen.count("list") == 2 and "watch new" in seen else None
        try:
            with anyio.fail_after(20):
                return await kube.wait_with(feed, after_relist, tick=0.05)
        finally:
            await k.close()
    assert anyio.run(main)[:4] == ["list", "watch old", "list", "watch new"]
