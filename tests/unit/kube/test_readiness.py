"""The one waiter (bridge/kube/readiness.py) and the readiness queries built on it: watched
(list, then watch; a fake that serves no watch is polled), riding out an API server that does
not answer, refusals raised, bounded by the caller."""

from __future__ import annotations

import io
from typing import Any

import anyio
import pytest
from aiohttp import web

from bridge.kube import readiness
from bridge.kube.client import ApiError, Unreachable
from bridge.model import state
from bridge.progress import Progress
from tests.unit.support import FakeKube, api_error, kube_serving


def pod(name: str, ip: str, ready: bool = True, session: str | None = None) -> dict[str, Any]:
    labels = {"app": "hello"} | ({state.SESSION_LABEL: session} if session else {})
    return {"metadata": {"name": name, "labels": labels},
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def served_by(kube: FakeKube, *ips: str) -> None:
    kube.endpoints["hello"] = {"subsets": [{"addresses": [{"ip": ip} for ip in ips]}]}


def hello(kube: FakeKube, replicas: int, ready: int) -> None:
    kube.add("hello", replicas)
    kube.deployments["hello"]["status"]["readyReplicas"] = ready
    kube.services = [{"metadata": {"name": "hello"}, "spec": {"selector": {"app": "hello"}}}]


def quiet() -> Progress:
    return Progress(stream=io.StringIO())


def test_deployment_ready_needs_the_latest_spec_observed_and_its_pods_ready() -> None:
    dep = {"metadata": {"generation": 3},
           "status": {"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 2}}
    assert readiness.deployment_ready(dep, 2)
    assert not readiness.deployment_ready(dep, 3)
    assert not readiness.deployment_ready(dep | {"metadata": {"generation": 4}}, 2)
    assert not readiness.deployment_ready(
        dep | {"status": {"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 1}}, 2)


def test_original_ips_leave_out_a_sessions_pods_and_pods_not_ready() -> None:
    pods = [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False),
            pod("proxy", "10.0.0.9", session="s1")]
    assert readiness.original_ips(pods) == {"10.0.0.1"}
    deleting = pod("c", "10.0.0.3")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not readiness.pod_ready(deleting)


def test_until_rides_out_an_api_server_that_does_not_answer() -> None:
    kube = FakeKube()
    kube.pods = [pod("a", "10.0.0.1")]
    kube.fail["list_pods"] = [Unreachable("connection refused"),
                              api_error(503, "etcd is restarting")]

    async def found(pods: list[dict[str, Any]]) -> str | None:
        return pods[0]["metadata"]["name"] if pods else None

    async def main() -> str:
        with anyio.fail_after(5):
            return await readiness.until(kube, readiness.pods("app=hello"), found, again=0.01)  # type: ignore[arg-type]

    assert anyio.run(main) == "a"
    assert kube.calls.count("list_pods") == 3  # two failed lists, then the one that answered


def test_until_raises_a_refusal_at_once() -> None:
    kube = FakeKube()
    kube.fail["list_pods"] = [api_error(403, "pods is forbidden")]

    async def never(_: list[dict[str, Any]]) -> bool | None:
        return None

    async def main() -> None:
        with anyio.fail_after(5):
            await readiness.until(kube, readiness.pods("app=hello"), never, again=0.01)  # type: ignore[arg-type]

    with pytest.raises(ApiError, match="forbidden"):
        anyio.run(main)
    assert kube.calls.count("list_pods") == 1


def test_a_deployment_is_watched_by_its_name() -> None:
    kube = FakeKube()
    hello(kube, 2, 2)
    kube.pods = [pod("a", "10.0.0.1")]
    served_by(kube, "10.0.0.1")
    anyio.run(readiness.wait_original_ready, kube, "hello", 2, 5.0, quiet())
    assert ("deployments", "", "metadata.name=hello") in kube.watched


def test_the_original_is_ready_once_its_pods_are_ready_and_in_every_services_endpoints() -> None:
    kube = FakeKube()
    hello(kube, 2, 0)
    kube.pods = [pod("proxy", "10.0.0.9", session="s1")]
    served_by(kube, "10.0.0.9")  # only the proxy serves
    steps: list[str] = []

    async def cluster() -> None:  # the controllers, one step at a time
        await anyio.sleep(0.3)
        kube.deployments["hello"]["status"]["readyReplicas"] = 2
        steps.append("deployment ready")
        await anyio.sleep(0.3)
        kube.pods.append(pod("a", "10.0.0.1"))
        steps.append("pod ready")
        await anyio.sleep(0.3)
        served_by(kube, "10.0.0.9", "10.0.0.1")
        steps.append("in the endpoints")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster)
            with anyio.fail_after(5):
                await readiness.wait_original_ready(kube, "hello", 2, 5.0, quiet())  # type: ignore[arg-type]
            steps.append("ready")

    anyio.run(main)
    assert steps == ["deployment ready", "pod ready", "in the endpoints", "ready"]


def test_waiting_for_the_original_is_bounded() -> None:
    kube = FakeKube()
    hello(kube, 2, 1)

    with pytest.raises(TimeoutError):
        anyio.run(readiness.wait_original_ready, kube, "hello", 2, 0.5, quiet())


def test_wait_pods_gone_says_what_it_waits_for_and_is_bounded() -> None:
    kube = FakeKube()
    kube.pods = [pod("proxy", "10.0.0.9", session="s1")]
    out = io.StringIO()

    async def gone_later() -> bool:
        async with anyio.create_task_group() as tg:
            async def delete() -> None:
                await anyio.sleep(0.3)
                kube.pods.clear()
            tg.start_soon(delete)
            return await readiness.wait_pods_gone(kube, "s=1", 5.0, Progress(stream=out),  # type: ignore[arg-type]
                                                  "the proxy's pods to terminate")

    assert anyio.run(gone_later) is True
    assert "the proxy's pods to terminate" in out.getvalue()
    kube.pods = [pod("proxy", "10.0.0.9", session="s1")]
    assert anyio.run(readiness.wait_pods_gone, kube, "s=1", 0.3, quiet(), "pods") is False


def test_service_ips_polls_v1_endpoints_on_a_server_without_endpointslices() -> None:
    kube = FakeKube()
    served_by(kube, "10.0.0.1")

    async def no_slices(*_: Any, **__: Any) -> Any:
        raise api_error(404, "the server could not find the requested resource")
    kube.wait_for = no_slices  # type: ignore[method-assign]

    def has(current: dict[str, set[str]]) -> set[str] | None:
        return current["hello"] or None

    async def main() -> set[str]:
        with anyio.fail_after(5):
            return await readiness.service_ips(kube, [{"metadata": {"name": "hello"}}], has)  # type: ignore[arg-type]

    assert anyio.run(main) == {"10.0.0.1"}


def test_kube_wait_for_sends_the_field_selector_and_watches_deployments() -> None:
    """The real client: the name travels as fieldSelector on the list and on the watch."""
    requests: list[dict[str, str]] = []
    dep = {"metadata": {"name": "hello", "resourceVersion": "5", "generation": 1},
           "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1}}

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.query))
        if request.query.get("watch") != "1":
            return web.json_response({"metadata": {"resourceVersion": "5"}, "items": []})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        import json
        await resp.write((json.dumps({"type": "ADDED", "object": dep}) + "\n").encode())
        await anyio.sleep(0.5)
        await resp.write_eof()
        return resp

    async def main() -> None:
        async with kube_serving({"/apis/apps/v1/namespaces/{ns}/deployments": handler}) as k:
            with anyio.fail_after(10):
                await readiness.wait_original_ready(k, "hello", 1, 10.0, quiet())

    anyio.run(main)
    assert [r.get("watch") for r in requests] == [None, "1"]
    assert all(r["fieldSelector"] == "metadata.name=hello" for r in requests)
    assert requests[1]["resourceVersion"] == "5"


def test_a_wait_the_list_already_satisfies_opens_no_watch() -> None:
    """One request, no watch cut short (which would close the connection and make the next
    request pay a new TCP and TLS handshake over the link)."""
    requests: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.query))
        if request.query.get("watch") == "1":
            await anyio.sleep(5)
        return web.json_response({"metadata": {"resourceVersion": "5"}, "items": [
            pod("a", "10.0.0.1")]})

    started: list[int] = []

    async def serving(pods: list[dict[str, Any]]) -> set[str] | None:
        return readiness.original_ips(pods) or None

    async def main() -> set[str]:
        async with kube_serving({"/api/v1/namespaces/{ns}/pods": handler}) as k:
            with anyio.fail_after(10):
                found = await readiness.until(k, readiness.pods("app=hello"), serving)
                await anyio.sleep(0.3)  # a watch started beside the check would show by now
                started.append(k.requests)
                return found

    assert anyio.run(main) == {"10.0.0.1"}
    assert [r.get("watch") for r in requests] == [None]
    assert started == [1]  # not even started (on a slow link it would be sent, then cut)
