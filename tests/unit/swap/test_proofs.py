"""The reads of bridge's proofs (issue 19): what admission added to the original's pods is read
from the live pods of its CURRENT ReplicaSet, before the swap."""

from __future__ import annotations

import copy
from typing import Any

import anyio

from bridge.model import trust
from bridge.swap import proofs
from tests.unit.support import Rendezvous, api_error

TEMPLATE = {"metadata": {"labels": {"app": "hello"}},
            "spec": {"containers": [{"name": "app", "image": "hello:1"}]}}
ORIGINAL = {"metadata": {"name": "hello", "uid": "dep-uid",
                         "annotations": {trust.REVISION_ANNOTATION: "3"}},
            "spec": {"selector": {"matchLabels": {"app": "hello"}}, "template": TEMPLATE}}


def rs(name: str, revision: str, owner: str = "dep-uid") -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"{name}-uid",
                         "annotations": {trust.REVISION_ANNOTATION: revision},
                         "ownerReferences": [{"kind": "Deployment", "uid": owner,
                                              "controller": True}]}}


def pod(name: str, rs_name: str, extra: str | None) -> dict[str, Any]:
    spec = copy.deepcopy(TEMPLATE["spec"])
    if extra:
        spec["containers"].append({"name": extra, "image": "mesh:1"})
    return {"metadata": {"name": name, "labels": {"app": "hello", "pod-template-hash": "h"},
                         "ownerReferences": [{"kind": "ReplicaSet", "uid": f"{rs_name}-uid",
                                              "controller": True}]},
            "spec": spec}


class Kube:
    def __init__(self, replicasets: list[Any], pods: list[Any], fail: bool = False) -> None:
        self.replicasets, self.pods, self.fail = replicasets, pods, fail
        self.selectors: list[str] = []

    async def list_replicasets(self, selector: str) -> list[Any]:
        self.selectors.append(selector)
        if self.fail:
            raise api_error(403, "replicasets is forbidden")
        return self.replicasets

    async def list_pods(self, selector: str | None = None) -> list[Any]:
        return self.pods


def admitted(kube: Kube) -> tuple[trust.Admitted, str]:
    async def main() -> tuple[trust.Admitted, str]:
        return await proofs.admitted_by(kube, ORIGINAL)
    return anyio.run(main)


def test_the_current_replicasets_pods_say_what_admission_adds() -> None:
    kube = Kube([rs("old", "2"), rs("new", "3"), rs("theirs", "3", owner="someone")],
                [pod("a", "new", "mesh-proxy"), pod("b", "new", "mesh-proxy"),
                 pod("c", "old", None),  # before the mesh came: not what admission does now
                 pod("d", "theirs", "spy")])
    found, why = admitted(kube)
    assert why == "" and "mesh-proxy" in found.summary() and "spy" not in found.summary()
    assert kube.selectors == ["app=hello"]


def test_nothing_is_admitted_when_the_pods_cannot_be_read_or_disagree() -> None:
    found, why = admitted(Kube([], [], fail=True))
    assert found == trust.NOTHING_ADMITTED and "could not be read" in why
    found, why = admitted(Kube([rs("new", "3")], [pod("a", "new", "mesh-proxy"),
                                                 pod("x", "new", "spy")]))
    assert found == trust.NOTHING_ADMITTED and "differ" in why
    found, why = admitted(Kube([rs("new", "3")], []))
    assert found == trust.NOTHING_ADMITTED and "no running pod" in why


def test_the_replicasets_and_the_pods_are_read_at_once() -> None:
    """One round trip: each read waits (bounded) until the other is in flight too, so a
    serial pair of reads fails here instead of passing slower."""
    meet = Rendezvous(2)

    class AtOnce(Kube):
        async def list_replicasets(self, selector: str) -> list[Any]:
            await meet.arrive("replicasets")
            return await super().list_replicasets(selector)

        async def list_pods(self, selector: str | None = None) -> list[Any]:
            await meet.arrive("pods")
            return await super().list_pods(selector)

    found, why = admitted(AtOnce([rs("new", "3")], [pod("a", "new", "mesh-proxy")]))
    assert why == "" and "mesh-proxy" in found.summary()
    assert sorted(meet.entered) == ["pods", "replicasets"]
