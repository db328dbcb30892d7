"""The reads that bridge's proofs of ownership need (the proofs themselves are pure, in
`bridge.model.trust`): each listed pod's controlling ReplicaSet, and the proxy Deployment
before restore deletes it."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from bridge.errors import BridgeError
from bridge.kube import readiness
from bridge.kube.client import ApiError
from bridge.model import state, trust
from bridge.swap.together import at_once

Obj = Mapping[str, Any]
P = TypeVar("P", bound=Mapping[str, Any])


async def admitted_by(kube: Any, original: Obj) -> tuple[trust.Admitted, str]:
    """What admission (a mesh) added to the original Deployment's own pods, read from the live
    pods of its current ReplicaSet (`trust.admitted`), and why nothing is accepted when that
    is so. Read before the swap, while the original runs; the ReplicaSets and the pods at
    once (one round trip)."""
    selector = readiness.match_labels_selector(original)
    name = state.printable(str(trust.meta_of(original).get("name") or ""))
    if not selector:
        return trust.NOTHING_ADMITTED, f"deployment/{name} has no matchLabels to find its pods"
    try:
        replicasets, [pods] = await at_once(lambda: kube.list_replicasets(selector),
                                            lambda: kube.list_pods(selector))
    except ApiError as e:
        return trust.NOTHING_ADMITTED, f"the pods of deployment/{name} could not be read ({e})"
    return trust.admitted(original, trust.current_pods(original, replicasets, pods))


async def proven_pods(kube: Any, pods: Sequence[P], proxy_uid: str, planned_spec: Obj,
                      session: str, *, planned_meta: Obj | None = None,
                      admitted: trust.Admitted = trust.NOTHING_ADMITTED,
                      proxy: str = "") -> tuple[list[P], dict[str, list[str]], set[str]]:
    """(the pods of `pods` proven to run the plan, {name: problems} of the others, the names
    of those others that the proxy's ReplicaSet claims: bridge's own pod, changed, or a
    neighbour's copy) (`trust.pod_problems`). Reads each pod's controlling ReplicaSet; a
    ReplicaSet that cannot be found proves nothing."""
    proven: list[P] = []
    refused: dict[str, list[str]] = {}
    claimed: set[str] = set()
    for pod in pods:
        ref = trust.controller_of(pod)
        rs = None
        if ref is not None and ref.get("kind") == "ReplicaSet":
            try:
                rs = await kube.get_replicaset(str(ref.get("name")))
            except ApiError as e:
                if e.status != 404:
                    raise
        problems = trust.pod_problems(pod, proxy_uid, rs, planned_spec, session,
                                      planned_meta=planned_meta, admitted=admitted,
                                      proxy=proxy)
        if problems:
            name = str(trust.meta_of(pod).get("name"))
            refused[name] = problems
            if not trust.chain_problems(pod, proxy_uid, rs, session):
                claimed.add(name)
        else:
            proven.append(pod)
    return proven, refused, claimed


async def proxy_doubt(kube: Any, original: str, original_obj: Obj | None, session: str,
                      proxy: str) -> str:
    """Why deployment `proxy` may not be deleted as the proxy of `original` in `session`
    ("" when it may, or when it does not exist), as one line with the fix by hand."""
    try:
        found = await kube.get_deployment(proxy)
    except ApiError as e:
        if e.status == 404:
            return ""
        problems = [f"it could not be read ({e})"]
    except BridgeError as e:
        problems = [f"it could not be read ({e})"]
    else:
        uid = trust.meta_of(original_obj).get("uid") if original_obj else None
        problems = trust.proxy_deployment_problems(found, original, session, uid)
        if not problems:
            return ""
    where = " ".join(shlex.quote(a) for a in (
        (["--context", kube.context] if getattr(kube, "context", "") else [])
        + ["-n", str(getattr(kube, "namespace", "default"))]))
    return (f"deployment/{state.printable(proxy)} is not provably bridge's proxy for "
            f"deployment/{original} (session {session}): {'; '.join(problems)}; nothing was "
            f"changed; if it is, delete it yourself (kubectl {where} delete deployment/"
            f"{state.printable(proxy)}), scale {original} back and run: "
            + state.fix_by_hand(original).replace("kubectl ", f"kubectl {where} ", 1))
