"""Pure pieces of the test cluster's API side, without a running cluster: patches, selectors,
rollout steps, watch expiry."""

from __future__ import annotations

import asyncio

import pytest

from tests.equipment.localcluster import store as store_module
from tests.equipment.localcluster.controllers import rollout_plan, template_hash
from tests.equipment.localcluster.errors import ApiError
from tests.equipment.localcluster.patch import json_patch, merge_patch, strategic_merge_patch
from tests.equipment.localcluster.selectors import labels_match, parse_label_selector
from tests.equipment.localcluster.store import Store


def test_strategic_merge_retain_keys_and_replace() -> None:
    target = {"spec": {"strategy": {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxSurge": "25%"}}}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert strategic_merge_patch(target, patch) == {"spec": {"strategy": {"type": "Recreate"}}}
    target = {"containers": [{"name": "a"}, {"name": "b"}]}
    patch = {"containers": [{"name": "c"}, {"$patch": "replace"}]}
    assert strategic_merge_patch(target, patch) == {"containers": [{"name": "c"}]}


def test_strategic_merge_service_ports_by_port_and_finalizers_as_set() -> None:
    target = {"spec": {"ports": [{"port": 80, "targetPort": 8080}]},
              "metadata": {"finalizers": ["a"]}}
    patch = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]},
             "metadata": {"finalizers": ["a", "b"]}}
    out = strategic_merge_patch(target, patch)
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 8080, "name": "http"},
                                    {"port": 443}]
    assert out["metadata"]["finalizers"] == ["a", "b"]


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]},
                       {"a": {"b": None}, "l": [3]}) == {"a": {"c": 2}, "l": [3]}


def test_json_patch_ops_and_errors() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    out = json_patch(doc, [{"op": "add", "path": "/a/-", "value": 3},
                           {"op": "move", "from": "/b/c", "path": "/d"},
                           {"op": "copy", "from": "/d", "path": "/e"}])
    assert out == {"a": [1, 2, 3], "b": {}, "d": 1, "e": 1}
    assert doc == {"a": [1, 2], "b": {"c": 1}}  # the input is left alone
    with pytest.raises(ApiError) as info:
        json_patch(doc, [{"op": "test", "path": "/b/c", "value": 2}])
    assert info.value.code == 422


def test_label_selector_semantics() -> None:
    reqs = parse_label_selector("env notin (prod),tier")
    assert labels_match(reqs, {"tier": "x"})  # notin matches a missing label
    assert not labels_match(reqs, {"tier": "x", "env": "prod"})
    with pytest.raises(ApiError):
        parse_label_selector("a b c")


def _deployment(replicas: int, surge: str = "25%", unavailable: str = "25%") -> dict:
    return {"spec": {"replicas": replicas, "strategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge,
                                                   "maxUnavailable": unavailable}}}}


def _rs(name: str, replicas: int, available: int, created: str = "1") -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "availableReplicas": available}}


def test_rolling_update_respects_surge_and_unavailability() -> None:
    d = _deployment(4)  # maxSurge 1, maxUnavailable 1
    plan = rollout_plan(d, _rs("new", 0, 0, "2"), [_rs("old", 4, 4)])
    assert plan.new_replicas == 1  # one surge pod
    assert plan.old_replicas == {"old": 3}  # one may be unavailable
    plan = rollout_plan(d, _rs("new", 1, 0, "2"), [_rs("old", 3, 3)])
    assert plan.new_replicas == 2 and plan.old_replicas == {"old": 3}
    plan = rollout_plan(d, _rs("new", 4, 4, "2"), [_rs("old", 1, 1)])
    assert plan.new_replicas == 4 and plan.old_replicas == {"old": 0}


def test_single_replica_rollout_surges_first() -> None:
    d = _deployment(1)  # maxSurge 1 (rounded up), maxUnavailable 0 (rounded down)
    plan = rollout_plan(d, _rs("new", 0, 0, "2"), [_rs("old", 1, 1)])
    assert (plan.new_replicas, plan.old_replicas) == (1, {"old": 1})
    plan = rollout_plan(d, _rs("new", 1, 1, "2"), [_rs("old", 1, 1)])
    assert plan.old_replicas == {"old": 0}


def test_template_hash_is_stable_and_safe() -> None:
    t = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}}
    assert template_hash(t) == template_hash({**t})
    assert template_hash(t) != template_hash(t, 1)
    assert set(template_hash(t)) <= set("bcdfghjklmnpqrstvwxz2456789")


def test_watch_from_compacted_resource_version_is_410(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "EVENT_LOG_SIZE", 3)
    store = Store()
    for i in range(6):
        store.create("configmaps", {"metadata": {"name": f"c{i}", "namespace": "d"}})
    with pytest.raises(ApiError) as info:
        store.check_since("2")
    assert (info.value.code, info.value.reason) == (410, "Expired")

    async def replay() -> list[str]:
        names = []
        async for event in store.watch("configmaps", "d", store.resource_version):
            names.append(event.object["metadata"]["name"])
            break
        return names

    async def main() -> list[str]:
        task = asyncio.ensure_future(replay())
        await asyncio.sleep(0)
        store.create("configmaps", {"metadata": {"name": "late", "namespace": "d"}})
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(main()) == ["late"]


def test_recreate_waits_for_old_pods() -> None:
    d = {"spec": {"replicas": 2, "strategy": {"type": "Recreate"}}}
    plan = rollout_plan(d, _rs("new", 0, 0, "2"), [_rs("old", 2, 2)], old_pods_left=2)
    assert (plan.new_replicas, plan.old_replicas) == (0, {"old": 0})
    plan = rollout_plan(d, _rs("new", 0, 0, "2"), [_rs("old", 0, 0)], old_pods_left=1)
    assert plan.new_replicas == 0  # one old pod still terminating
    plan = rollout_plan(d, _rs("new", 0, 0, "2"), [_rs("old", 0, 0)], old_pods_left=0)
    assert plan.new_replicas == 2
