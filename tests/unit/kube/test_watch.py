"""The watch helper (bridge/kube/client.py): list, then watch from the list's resourceVersion;
re-list on 410 Gone; poll when the watch fails; every request bounded by the caller's deadline."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import pytest
from aiohttp import web

from bridge.kube import client as kube
from bridge.kube.client import Gone, WatchFailed, apply_event, follow, wait_with
from tests.unit.support import FakeKube, api_error, kube_serving


def pod(name: str, rv: str, ready: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": rv},
            "status": {"ready": ready}}


def names(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


class Script:
    """list_once / watch_once for `follow`: each list and each watch request answers the next
    item of its script (a watch: a list of events, or an exception to raise)."""

    def __init__(self, lists: list[tuple[list[dict[str, Any]], str]],
                 watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.listed = 0
        self.watched: list[tuple[str, float]] = []
        self.published: list[list[str]] = []

    async def list_once(self) -> tuple[list[dict[str, Any]], str]:
        self.listed += 1
        return self.lists[min(self.listed, len(self.lists)) - 1]

    async def watch_once(self, rv: str, bound: float) -> AsyncGenerator[Any, None]:
        self.watched.append((rv, bound))
        step = self.watches.pop(0) if self.watches else []
        if isinstance(step, BaseException):
            raise step
        for event in step:
            yield event
        if not self.watches:
            await anyio.sleep_forever()  # the last watch stays open

    def publish(self, objs: list[dict[str, Any]]) -> None:
        self.published.append(names(objs))


async def run_follow(script: Script, until: int, poll: float = 0.01) -> None:
    """Follow until `until` snapshots were published."""
    with anyio.fail_after(10), anyio.CancelScope() as scope:
        def publish(objs: list[dict[str, Any]]) -> None:
            script.publish(objs)
            if len(script.published) >= until:
                scope.cancel()
        await follow(script.list_once, script.watch_once, publish, poll=poll)


def test_follow_lists_then_watches_from_the_lists_resource_version() -> None:
    s = Script([([pod("a", "5")], "10")],
               [[{"type": "ADDED", "object": pod("b", "11")},
                 {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
                 {"type": "DELETED", "object": pod("a", "13")}],
                []])
    anyio.run(run_follow, s, 3)
    assert s.published == [["a"], ["a", "b"], ["b"]]  # a bookmark publishes nothing
    # the second watch starts where the first ended (the last event's resourceVersion)
    assert [rv for rv, _ in s.watched] == ["10", "13"]
    assert s.listed == 1


def test_follow_lists_again_on_410_gone_event_and_on_http_410() -> None:
    gone_event = {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                              "reason": "Expired", "message": "too old"}}
    s = Script([([pod("a", "5")], "10"), ([pod("b", "20")], "20"), ([pod("c", "30")], "30")],
               [[gone_event], Gone("HTTP 410"), []])
    anyio.run(run_follow, s, 3)
    assert s.published == [["a"], ["b"], ["c"]]
    assert s.listed == 3
    assert [rv for rv, _ in s.watched] == ["10", "20", "30"]


def test_follow_falls_back_to_polling_when_the_watch_fails() -> None:
    s = Script([([pod("a", "5")], "10"), ([pod("b", "6")], "11")],
               [WatchFailed("HTTP 403 watching pods")])
    anyio.run(run_follow, s, 3)
    assert s.published == [["a"], ["b"], ["b"]]
    assert len(s.watched) == 1  # no second watch: the lists go on instead


def test_an_error_event_other_than_410_turns_the_follow_into_polling() -> None:
    s = Script([([pod("a", "5")], "10"), ([], "11")],
               [[{"type": "ERROR", "object": {"code": 500, "message": "etcd"}}]])
    anyio.run(run_follow, s, 2)
    assert s.published == [["a"], []]
    assert len(s.watched) == 1


def test_each_watch_request_is_bounded_by_the_callers_deadline() -> None:
    s = Script([([], "10")], [[]])

    async def main() -> None:
        with anyio.move_on_after(1.5):
            await follow(s.list_once, s.watch_once, s.publish)
    anyio.run(main)
    assert len(s.watched) == 1
    assert 1.0 <= s.watched[0][1] <= 1.5  # not the 290 s of an unbounded wait


def test_apply_event_refuses_what_is_not_an_event() -> None:
    for bad in ("x", {"type": "ADDED"}, {"type": "RENAMED", "object": {}}):
        with pytest.raises(WatchFailed):
            apply_event({}, bad)
    objs: dict[str, Any] = {}
    assert apply_event(objs, {"type": "MODIFIED", "object": pod("a", "7")}) == ("MODIFIED", "7")
    assert list(objs) == ["uid-a"]


def test_wait_with_returns_the_first_answer_and_rechecks_on_ticks() -> None:
    flag: list[bool] = []

    async def feed(publish: Any) -> None:
        publish([pod("a", "1")])
        await anyio.sleep_forever()

    async def check(objs: list[dict[str, Any]]) -> str | None:
        return "stop" if flag else None

    async def main() -> str:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async def later() -> None:
                    await anyio.sleep(0.05)
                    flag.append(True)  # local state, no new snapshot: a tick sees it
                tg.start_soon(later)
                return await wait_with(feed, check, tick=0.01)
    assert anyio.run(main) == "stop"


def test_wait_with_ends_at_the_callers_deadline() -> None:
    async def feed(publish: Any) -> None:
        publish([])
        await anyio.sleep_forever()

    async def never(objs: list[dict[str, Any]]) -> None:
        return None

    async def main() -> None:
        with anyio.fail_after(0.1):
            await wait_with(feed, never, tick=0.01)
    with pytest.raises(TimeoutError):
        anyio.run(main)


def test_wait_with_raises_the_feeds_error_itself() -> None:
    async def feed(publish: Any) -> None:
        raise api_error(403, "pods is forbidden")

    async def never(objs: list[dict[str, Any]]) -> None:
        return None

    with pytest.raises(kube.Forbidden):  # not wrapped in an ExceptionGroup
        anyio.run(wait_with, feed, never)


def test_the_fake_api_waits_by_polling() -> None:
    k = FakeKube()
    k.pods = [pod("a", "1")]

    async def check(objs: list[dict[str, Any]]) -> list[str] | None:
        if names(objs) == ["a"]:
            k.pods = [pod("b", "2")]
            return None
        return names(objs)
    assert anyio.run(k.wait_for, "pods", "x=y", check) == ["b"]
    assert k.calls.count("list_pods") >= 2


# -- Kube.wait_for against an HTTP server speaking the watch protocol ----------------------


class WatchServer:
    """Pods of one namespace: a list with resourceVersion "10"; a watch from "10" answers
    `first_watch` (410 or events), a later one streams `events`."""

    def __init__(self, first_watch: int | list[dict[str, Any]],
                 events: list[dict[str, Any]]) -> None:
        self.first_watch, self.events = first_watch, events
        self.requests: list[dict[str, str]] = []

    async def handler(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        self.requests.append(q)
        if q.get("watch") != "1":
            return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": "10"},
                                      "items": [pod("a", "9")]})
        watches = sum(1 for r in self.requests if r.get("watch") == "1")
        step: int | list[dict[str, Any]] = self.first_watch if watches == 1 else self.events
        if isinstance(step, int):
            return web.json_response({"kind": "Status", "code": step}, status=step)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for event in step:
            await resp.write((json.dumps(event) + "\n").encode())
        await anyio.sleep(min(float(q.get("timeoutSeconds", "1")), 0.5))
        await resp.write_eof()
        return resp


async def wait_on(server: WatchServer, check: Any) -> Any:
    async with kube_serving({"/api/v1/namespaces/{ns}/pods": server.handler}) as k:
        with anyio.fail_after(10):
            return await k.wait_for("pods", "app=x", check, tick=0.01)


async def ready_names(objs: list[dict[str, Any]]) -> list[str] | None:
    ready = [o for o in objs if o["status"]["ready"]]
    return names(ready) if ready else None


def test_kube_wait_for_sees_the_watchs_events() -> None:
    server = WatchServer([{"type": "MODIFIED", "object": pod("a", "11", ready=True)}], [])
    assert anyio.run(wait_on, server, ready_names) == ["a"]
    watch = [r for r in server.requests if r.get("watch") == "1"][0]
    assert watch["resourceVersion"] == "10" and watch["labelSelector"] == "app=x"
    assert watch["allowWatchBookmarks"] == "true" and int(watch["timeoutSeconds"]) <= 10


def test_kube_wait_for_lists_again_after_http_410() -> None:
    server = WatchServer(410, [{"type": "ADDED", "object": pod("b", "12", ready=True)}])
    assert anyio.run(wait_on, server, ready_names) == ["b"]
    assert [r.get("watch") for r in server.requests] == [None, "1", None, "1"]


def test_kube_wait_for_polls_when_watching_is_forbidden() -> None:
    server = WatchServer(403, [])
    lists: list[int] = []

    async def third_list(objs: list[dict[str, Any]]) -> bool | None:
        lists.append(1)
        n = sum(1 for r in server.requests if r.get("watch") != "1")
        return True if n >= 3 else None
    assert anyio.run(wait_on, server, third_list) is True
    assert sum(1 for r in server.requests if r.get("watch") == "1") == 1
