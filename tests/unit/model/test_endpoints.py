"""EndpointSlices and podIPs: the addresses a Service really sends traffic to."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web
from kubernetes.aio import client as kclient

from bridge.kube.client import Kube
from bridge.model.endpoints import pod_ips, ready_ips, ready_ips_from_endpoints, serves


def eps(service: str, family: str, *endpoints: tuple[str, bool | None]) -> dict[str, Any]:
    items = []
    for ip, ready in endpoints:
        ep: dict[str, Any] = {"addresses": [ip]}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        items.append(ep)
    return {"addressType": family, "endpoints": items,
            "metadata": {"labels": {"kubernetes.io/service-name": service}}}


def test_ready_over_all_slices_and_families() -> None:
    slices = [eps("web", "IPv4", ("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None)),
              eps("web", "IPv6", ("fd00::0001", True)),
              eps("web", "FQDN", ("db.example", True)),
              eps("other", "IPv4", ("10.0.0.9", True))]
    assert ready_ips(slices, "web") == {"10.0.0.1", "10.0.0.3", "fd00::1"}


def test_untrusted_junk_is_skipped() -> None:
    slices: list[Any] = [eps("web", "IPv4", ("not-an-ip", True)), "x",
                         {"addressType": "IPv4", "endpoints": "x"},
                         {"addressType": "IPv4", "endpoints": [{"addresses": [7]}]}]
    assert ready_ips(slices) == set()
    assert ready_ips_from_endpoints({"subsets": [{"addresses": [{"ip": "bad"}, "x"]}]}) == set()


def test_v1_endpoints_fallback() -> None:
    ep = {"subsets": [{"addresses": [{"ip": "10.0.0.1"}],
                       "notReadyAddresses": [{"ip": "10.0.0.2"}]}]}
    assert ready_ips_from_endpoints(ep) == {"10.0.0.1"}


def test_pod_ips_dual_stack_and_ipv6_only() -> None:
    dual = {"status": {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}}
    assert pod_ips(dual) == {"10.0.0.5", "fd00::5"}
    v6 = {"status": {"podIP": "fd00::6", "podIPs": [{"ip": "fd00::6"}]}}
    # a Service of family IPv6 only lists the v6 address: still this pod
    assert serves(ready_ips([eps("web", "IPv6", ("fd00::6", True))]), v6)
    assert serves(ready_ips([eps("web", "IPv6", ("fd00::5", True))]), dual)
    assert not serves({"10.0.0.7"}, dual)
    assert pod_ips({"status": {"podIPs": "junk"}}) == set()


def test_kube_reads_slices_and_falls_back_to_endpoints_on_404() -> None:
    seen: list[str] = []

    async def main(slices_served: bool) -> set[str]:
        async def handler(request: web.Request) -> web.Response:
            seen.append(request.path_qs)
            if "endpointslices" in request.path:
                if not slices_served:
                    return web.json_response({"kind": "Status", "code": 404}, status=404)
                return web.json_response({"items": [eps("web", "IPv4", ("10.0.0.1", True)),
                                                    eps("web", "IPv6", ("fd00::1", True))]})
            return web.json_response({"subsets": [{"addresses": [{"ip": "10.0.0.2"}]}]})

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        config = kclient.Configuration(host=f"http://127.0.0.1:{sock.getsockname()[1]}")
        kube = Kube(kclient.ApiClient(config), "ns", "ctx", config.host)
        try:
            return await kube.service_ready_ips("web")
        finally:
            await kube.close()
            await runner.cleanup()

    assert asyncio.run(main(True)) == {"10.0.0.1", "fd00::1"}
    assert "labelSelector=kubernetes.io/service-name%3Dweb" in seen[0]
    assert asyncio.run(main(False)) == {"10.0.0.2"}
    assert seen[-1] == "/api/v1/namespaces/ns/endpoints/web"
