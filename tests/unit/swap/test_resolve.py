"""The resolve phase (bridge/swap/resolve.py): reads that do not depend on each other go out
at once (one round trip, not two), and every error comes out as it was, not in a group."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from bridge.errors import NothingChanged
from bridge.kube.client import ApiError
from bridge.swap.resolve import resolve_target, resolve_with
from tests.unit.support import FakeKube, api_error

RTT = 0.2


class SlowKube(FakeKube):
    """Every read takes RTT; how many were in flight at once is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0

    async def _slow(self) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await anyio.sleep(RTT)
        finally:
            self.in_flight -= 1

    async def get_deployment(self, name: str) -> dict[str, Any]:
        await self._slow()
        return await super().get_deployment(name)

    async def list_services(self) -> list[dict[str, Any]]:
        await self._slow()
        return await super().list_services()

    async def list_deployments(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        await self._slow()
        self._enter("list_deployments")
        return list(self.deployments.values())

    async def list_scaled_objects(self) -> list[dict[str, Any]]:
        await self._slow()
        self._enter("list_scaled_objects")
        return [{"kind": "ScaledObject", "metadata": {"name": "keda"}}]

    async def list_limit_ranges(self) -> list[dict[str, Any]]:
        await self._slow()
        self._enter("list_limit_ranges")
        return [{"kind": "LimitRange", "metadata": {"name": "lr"}}]

    async def get_service(self, name: str) -> dict[str, Any]:
        await self._slow()
        for s in self.services:
            if s["metadata"]["name"] == name:
                return dict(s)
        raise api_error(404, f'services "{name}" not found')


def hello() -> SlowKube:
    kube = SlowKube()
    kube.add("hello", 1)
    kube.services = [{"metadata": {"name": "hello-svc"}, "spec": {"selector": {"app": "hello"}}},
                     {"metadata": {"name": "other"}, "spec": {"selector": {"app": "other"}}}]
    return kube


def timed(kube: SlowKube, text: str) -> tuple[Any, float]:
    async def main() -> tuple[Any, float]:
        started = anyio.current_time()
        found = await resolve_target(kube, text)  # type: ignore[arg-type]
        return found, anyio.current_time() - started
    return anyio.run(main)


def test_the_deployment_and_the_services_are_read_at_once() -> None:
    kube = hello()
    (dep, services), took = timed(kube, "hello")
    assert dep["metadata"]["name"] == "hello"
    assert [s["metadata"]["name"] for s in services] == ["hello-svc"]
    assert kube.most == 2
    assert took < 2 * RTT  # one round trip, not two


def test_a_service_and_the_deployments_are_read_at_once() -> None:
    kube = hello()
    (dep, _), took = timed(kube, "svc/hello-svc")
    assert dep["metadata"]["name"] == "hello"
    assert took < 3 * RTT  # the Service beside the Deployments, the Services beside both


def test_a_missing_target_is_one_clear_error() -> None:
    with pytest.raises(NothingChanged, match='deployment "nope" not found in namespace "ns"'):
        timed(hello(), "deploy/nope")
    with pytest.raises(NothingChanged, match='no deployment or service named "nope"'):
        timed(hello(), "nope")


def test_no_right_to_list_deployments_is_raised_once_the_service_exists() -> None:
    kube = hello()
    kube.fail["list_deployments"] = [api_error(403, "deployments.apps is forbidden")]
    with pytest.raises(ApiError, match="forbidden"):
        timed(kube, "svc/hello-svc")
    kube.fail["list_deployments"] = [api_error(403, "deployments.apps is forbidden")]
    with pytest.raises(NothingChanged, match='no service named "gone"'):
        timed(kube, "svc/gone")


def with_container() -> SlowKube:
    kube = hello()
    kube.deployments["hello"]["spec"]["template"]["spec"] = {
        "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]}
    return kube


def test_the_scaled_objects_and_limit_ranges_go_out_beside_the_target() -> None:
    """The set-up's first round trip carries all four reads: the Deployment, the Services,
    the ScaledObjects and the LimitRanges (none depends on another): four in flight at once."""
    kube = with_container()
    r, scaled, limits = anyio.run(lambda: resolve_with(kube, "hello", None, ()))  # type: ignore[arg-type]
    assert r.name == "hello" and [s["metadata"]["name"] for s in r.services] == ["hello-svc"]
    assert (scaled[0]["kind"], limits[0]["kind"]) == ("ScaledObject", "LimitRange")
    assert kube.most == 4


def test_beside_the_target_a_missing_deployment_is_still_the_error() -> None:
    """A side read that fails (ScaledObjects: a server error) does not hide what is wrong
    with TARGET; with TARGET found, the side's error is raised as it is, never grouped."""
    kube = with_container()
    kube.fail["list_scaled_objects"] = [api_error(500, "etcd is down")]
    with pytest.raises(NothingChanged, match='deployment "nope" not found'):
        anyio.run(lambda: resolve_with(kube, "deploy/nope", None, ()))  # type: ignore[arg-type]
    kube.fail["list_scaled_objects"] = [api_error(500, "etcd is down")]
    with pytest.raises(ApiError, match="etcd is down"):
        anyio.run(lambda: resolve_with(kube, "hello", None, ()))  # type: ignore[arg-type]
