"""What bridge accepts from the cluster as its own: proxy Deployments, proxy pods, host keys.

Anyone who can create pods or edit Deployments in the namespace can write labels, annotations,
pod logs and owner references. bridge acts only on objects it can prove are its own, and each
proof is a pure function here, returning what is wrong (an empty list: nothing):

- `proxy_deployment_problems`: before restore deletes a proxy Deployment: the name derived
  from the target and the session, bridge's labels and marker annotations for that target and
  session, and (when the original still exists) an owner reference to the original's UID;
- `pod_problems`: before the tunnel trusts a pod: its controller is a ReplicaSet whose
  controller is the proxy Deployment bridge created (by UID), and its spec is the planned one
  (same containers, images, commands, environment; no extra or ephemeral containers, no host
  namespaces). A bare pod carrying the session label is never taken;
- `host_key_announcement`: the sidecar's own first `host-key:` line, in the strict format,
  from a bounded head of the log (never the last such line of the whole log).

The reads the proofs need (`proven_pods`, `proxy_doubt`) are in `bridge.swap.proofs`; this
module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from bridge.model import plan, state
from sidecar import protocol

Obj = Mapping[str, Any]
P = TypeVar("P", bound=Mapping[str, Any])

# Bytes of the sidecar's log read for its host key: the announcement is its first line on
# stdout, printed before it accepts any connection.
HOST_KEY_LOG_LIMIT = 4096
_HOST_KEY_LINE = re.compile(
    re.escape(protocol.HOST_KEY_LOG_PREFIX) + r"(ssh-ed25519 [A-Za-z0-9+/]{68}={0,2})\Z")
# Where the API server's ServiceAccount admission mounts the token (only when
# automountServiceAccountToken allows it); the one mount a pod may have beyond the plan.
SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN_VOLUME_PREFIX = "kube-api-access-"
# Container fields the API server rewrites (quantities are normalised) or adds; not compared.
_UNCOMPARED = frozenset({"resources", "terminationMessagePath", "terminationMessagePolicy",
                         "imagePullPolicy"})
# What an API server may add to a container the plan made; any other added field (a command,
# a hook, a probe...) is a change to the plan.
_CONTAINER_DEFAULTS = frozenset({"terminationMessagePath", "terminationMessagePolicy",
                                 "imagePullPolicy", "resources", "volumeMounts"})
# Pod-level fields that give a container more than the plan did when added.
_POD_ADDITIONS = ("shareProcessNamespace", "hostUsers", "hostAliases")
# Lists that must match the plan item for item, nothing added.
_EXACT_LISTS = frozenset({"containers", "initContainers", "env", "envFrom", "command", "args",
                          "ports"})


def meta_of(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def controller_of(obj: Obj) -> Mapping[str, Any] | None:
    for ref in meta_of(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def host_key_announcement(log_head: str) -> str | None:
    """The host key the sidecar announced: its first `host-key:` line, which must be exactly
    ``host-key: ssh-ed25519 <base64>``. None when there is no such line yet, or the first one
    is malformed (then nothing later in the log is believed either)."""
    for line in log_head.split("\n"):
        if line.startswith(protocol.HOST_KEY_LOG_PREFIX):
            m = _HOST_KEY_LINE.match(line.rstrip("\r"))
            return m.group(1) if m else None
    return None


def proxy_deployment_problems(proxy: Obj, original: str, session: str,
                              original_uid: str | None) -> list[str]:
    """Why `proxy` is not provably the proxy bridge created for deployment `original` in
    `session` (empty: it is). `original_uid`: the original's UID while it exists."""
    found: list[str] = []
    meta = meta_of(proxy)
    name = str(meta.get("name") or "")
    expected = plan.proxy_name(original, session)
    if name != expected:
        found.append(f"its name is {state.printable(name)}, not {expected}")
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    want = {state.MANAGED_BY_LABEL: state.MANAGED_BY, state.SESSION_LABEL: session,
            state.PROXY_FOR_LABEL: plan.label_value(original)}
    for key, value in want.items():
        if labels.get(key) != value:
            found.append(f"label {key} is {state.printable(str(labels.get(key)))}, "
                         f"not {value}")
    if annotations.get(state.PROXY_FOR_LABEL) != original:
        found.append(f"annotation {state.PROXY_FOR_LABEL} does not name {original}")
    if any(k in annotations for k in (state.SESSION, state.REPLICAS, state.PROXY)):
        found.append("it carries a lock of its own (it is a swapped Deployment, not a proxy)")
    if original_uid is not None:
        refs = meta.get("ownerReferences") or []
        if not any(r.get("uid") == original_uid and r.get("kind") == "Deployment"
                   for r in refs):
            found.append(f"it has no owner reference to deployment/{original} "
                         f"(uid {original_uid})")
    return found


def _subset(planned: Any, actual: Any, path: str, found: list[str]) -> None:
    """Every value of `planned` is in `actual` (the API server may add defaults)."""
    if isinstance(planned, Mapping):
        if not isinstance(actual, Mapping):
            found.append(f"{path} differs from the plan")
            return
        for key, value in planned.items():
            if key in _UNCOMPARED:
                continue
            _subset(value, actual.get(key), f"{path}.{key}", found)
    elif isinstance(planned, list):
        key = path.rsplit(".", 1)[-1]
        if not isinstance(actual, list):
            found.append(f"{path} differs from the plan")
        elif key in _EXACT_LISTS:
            if len(actual) != len(planned):
                found.append(f"{path} has {len(actual)} entries, the plan {len(planned)}")
                return
            for i, (p, a) in enumerate(zip(planned, actual, strict=True)):
                _subset(p, a, f"{path}[{i}]", found)
        else:
            for i, p in enumerate(planned):
                if not any(_matches(p, a) for a in actual):
                    found.append(f"{path}[{i}] is missing")
    elif planned != actual and not (planned in (None, False, "", 0) and actual in
                                     (None, False, "", 0)):
        found.append(f"{path} differs from the plan")


def _matches(planned: Any, actual: Any) -> bool:
    found: list[str] = []
    _subset(planned, actual, "", found)
    return not found


def _extra_mounts(planned: Sequence[Obj], actual: Sequence[Obj], path: str) -> list[str]:
    names = {m.get("mountPath") for m in planned}
    return [f"{path} has an extra mount at {state.printable(str(m.get('mountPath')))}"
            for m in actual
            if m.get("mountPath") not in names and not (
                m.get("mountPath") == SA_TOKEN_PATH and m.get("readOnly")
                and str(m.get("name", "")).startswith(SA_TOKEN_VOLUME_PREFIX))]


def spec_problems(planned: Obj, actual: Obj) -> list[str]:
    """How the pod spec `actual` differs from the planned pod template spec: every planned
    value present, no container, init container, ephemeral container, host namespace or
    volume mount the plan lacks."""
    found: list[str] = []
    _subset(planned, actual, "spec", found)
    if actual.get("ephemeralContainers"):
        found.append("spec.ephemeralContainers: the pod has debug containers added")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if actual.get(key) and not planned.get(key):
            found.append(f"spec.{key} is set, the plan does not set it")
    for key in _POD_ADDITIONS:
        if key in actual and actual.get(key) != planned.get(key) and key not in planned:
            found.append(f"spec.{key} is set, the plan does not set it")
    for key in ("containers", "initContainers"):
        for p, a in zip(planned.get(key) or [], actual.get(key) or [], strict=False):
            where = f"spec.{key}[{p.get('name')}]"
            for extra in sorted(set(a) - set(p) - _CONTAINER_DEFAULTS):
                found.append(f"{where}.{extra} was added")
            for extra in sorted(set(a.get("securityContext") or {})
                                - set(p.get("securityContext") or {})):
                found.append(f"{where}.securityContext.{extra} was added")
            found += _extra_mounts(p.get("volumeMounts") or [], a.get("volumeMounts") or [],
                                   where)
    planned_volumes = {v.get("name") for v in planned.get("volumes") or []}
    for v in actual.get("volumes") or []:
        if v.get("name") not in planned_volumes and not (
                str(v.get("name", "")).startswith(SA_TOKEN_VOLUME_PREFIX) and "projected" in v
                and len(v) == 2):
            found.append(f"spec.volumes has an extra volume {state.printable(str(v.get('name')))}")
    return found


def pod_problems(pod: Obj, proxy_uid: str, replicaset: Obj | None, planned_spec: Obj,
                 session: str) -> list[str]:
    """Why `pod` is not provably a pod of the proxy Deployment bridge created (uid
    `proxy_uid`), running the planned spec (empty: it is). `replicaset`: the ReplicaSet the
    pod's controller reference names, as read from the API (None: not found)."""
    found: list[str] = []
    meta = meta_of(pod)
    if (meta.get("labels") or {}).get(state.SESSION_LABEL) != session:
        found.append(f"it lacks the label {state.SESSION_LABEL}={session}")
    ref = controller_of(pod)
    if ref is None or ref.get("kind") != "ReplicaSet":
        found.append("it is not controlled by a ReplicaSet (a bare pod)")
    elif replicaset is None:
        found.append(f"its ReplicaSet {state.printable(str(ref.get('name')))} does not exist")
    else:
        if meta_of(replicaset).get("uid") != ref.get("uid"):
            found.append("its controller reference does not match its ReplicaSet's UID")
        rs_ref = controller_of(replicaset)
        if rs_ref is None or rs_ref.get("kind") != "Deployment" or rs_ref.get("uid") != proxy_uid:
            found.append("its ReplicaSet is not controlled by the proxy Deployment bridge "
                         "created")
    found += spec_problems(planned_spec, pod.get("spec") or {})
    return found


def describe(name: str, problems: Sequence[str], limit: int = 3) -> str:
    """One line naming the first few problems."""
    shown = "; ".join(problems[:limit])
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return f"{name}: {shown}{more}"
