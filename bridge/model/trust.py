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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
# -- what the API server fills in ------------------------------------------------------------
# The proof of a pod is an allowlist: every field of the pod's spec equals the plan, or is one
# of these, filled in by the API server's defaulting, its admission plugins or the scheduler,
# with the value they give it (checked on Kubernetes v1.34 built here: create a pod, read it).
#
# ServiceAccount admission: a projected token volume named kube-api-access-<random>, mounted
# read-only in every container at SA_TOKEN_PATH (only when automountServiceAccountToken allows).
SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN_VOLUME_PREFIX = "kube-api-access-"
_SA_TOKEN_SOURCES = (
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
)
# DefaultTolerationSeconds admission: these two NoExecute tolerations.
DEFAULT_TOLERATION_KEYS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Pod-spec fields set on every pod when the plan does not set them, and the values accepted.
# nodeName is the scheduler's binding: bridge cannot tell it from a nodeName written by the
# pod's creator (README, security model); priority fields only order scheduling.
_POD_FILLED: dict[str, Callable[[Any, Obj], bool]] = {
    "nodeName": lambda v, p: isinstance(v, str),
    "serviceAccountName": lambda v, p: v == "default",
    "serviceAccount": lambda v, p: v == (p.get("serviceAccountName") or "default"),
    "priority": lambda v, p: _is_int(v),
    "priorityClassName": lambda v, p: isinstance(v, str),
    "preemptionPolicy": lambda v, p: v in ("PreemptLowerPriority", "Never"),
    "enableServiceLinks": lambda v, p: v is True,
    "restartPolicy": lambda v, p: v == "Always",
    "dnsPolicy": lambda v, p: v == "ClusterFirst",
    "schedulerName": lambda v, p: v == "default-scheduler",
    "terminationGracePeriodSeconds": lambda v, p: v == 30,
    "securityContext": lambda v, p: v == {},
    # RuntimeClass admission: the planned runtime class's pod overhead
    "overhead": lambda v, p: bool(p.get("runtimeClassName")) and isinstance(v, Mapping),
}
# Container fields set on every container when the plan does not set them.
_CONTAINER_FILLED: dict[str, Callable[[Any], bool]] = {
    "terminationMessagePath": lambda v: v == "/dev/termination-log",
    "terminationMessagePolicy": lambda v: v == "File",
    "imagePullPolicy": lambda v: v in ("Always", "IfNotPresent", "Never"),
}
# Nested fields the API server defaults (ports' protocol, volumes' mode, fieldRef's version,
# probes' timing and scheme, a projected token's lifetime, a resourceFieldRef's divisor).
_NESTED_FILLED: dict[str, Any] = {
    "protocol": "TCP", "defaultMode": 420, "apiVersion": "v1", "scheme": "HTTP",
    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3,
    "expirationSeconds": 3600, "divisor": "0",
}
# Container fields not compared: the API server normalises quantities and LimitRange admission
# fills requests and limits in; they only bound the container (device claims need pod-level
# resourceClaims, which are compared).
_UNCOMPARED = frozenset({"resources"})
# Fields whose absence is not the same as false (absent allowPrivilegeEscalation allows it).
_ABSENT_IS_NOT_FALSE = frozenset({"allowPrivilegeEscalation"})
# Labels the Deployment's ReplicaSet adds to the pods it creates.
_FILLED_LABELS = frozenset({"pod-template-hash"})
_CONTAINER_LISTS = ("initContainers", "containers")


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
    return [state.printable(f, 300) for f in found]  # `original` may be read from the cluster


# -- what admission added to the original's own pods -----------------------------------------

@dataclass(frozen=True)
class Admitted:
    """What admission (a mesh's injector, other mutating webhooks) added to the original
    Deployment's own pods beyond their template; the proxy pod may carry the same and nothing
    else. Read before the swap from the live pods of the original's current ReplicaSet
    (`admitted`). Values that name the workload (the original's name) are compared with the
    proxy's name in their place."""

    workload: str = ""  # the original Deployment's name
    # "containers"/"initContainers" -> the container names in the original's pods' order
    order: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # "containers"/"initContainers" -> {name: container} added to the original's pods
    containers: Mapping[str, Mapping[str, Obj]] = field(default_factory=dict)
    volumes: Mapping[str, Obj] = field(default_factory=dict)  # name -> volume added
    mounts: Mapping[str, tuple[Obj, ...]] = field(default_factory=dict)  # container -> added
    env: Mapping[str, tuple[Obj, ...]] = field(default_factory=dict)  # container -> added
    # container -> {field: (the template's value, the value admission gave it)}
    fields: Mapping[str, Mapping[str, tuple[Any, Any]]] = field(default_factory=dict)
    pod_fields: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)  # the same, pod
    tolerations: tuple[Obj, ...] = ()  # added (e.g. a namespace's, PodTolerationRestriction)
    labels: frozenset[str] = frozenset()  # label keys added (values may name the workload)
    annotations: frozenset[str] = frozenset()  # annotation keys added

    def summary(self) -> str:
        """What is accepted, in a few words (empty: nothing)."""
        parts = [f"{k} {', '.join(sorted(v))}" for k, v in self.containers.items() if v]
        if self.volumes:
            parts.append("volumes " + ", ".join(sorted(self.volumes)))
        return state.printable("; ".join(parts), 300)


NOTHING_ADMITTED = Admitted()


def _without_token(spec: Obj) -> dict[str, Any]:
    """`spec` without ServiceAccount admission's token volume and its mounts."""
    out = dict(spec)
    tokens = {v.get("name") for v in spec.get("volumes") or [] if _is_token_volume(v)}
    out["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") not in tokens]
    for key in _CONTAINER_LISTS:
        out[key] = [{**c, "volumeMounts": [m for m in c.get("volumeMounts") or []
                                           if m.get("name") not in tokens]}
                    for c in spec.get(key) or []]
    return out


def _additions(template: Obj, pod: Obj, workload: str) -> Admitted:
    t_spec = template.get("spec") or {}
    p_spec = _without_token(pod.get("spec") or {})
    order: dict[str, tuple[str, ...]] = {}
    added: dict[str, dict[str, Obj]] = {}
    mounts: dict[str, tuple[Obj, ...]] = {}
    env: dict[str, tuple[Obj, ...]] = {}
    fields: dict[str, dict[str, tuple[Any, Any]]] = {}
    for key in _CONTAINER_LISTS:
        t_by = {c.get("name"): c for c in t_spec.get(key) or []}
        order[key] = tuple(str(c.get("name")) for c in p_spec.get(key) or [])
        added[key] = {str(c.get("name")): c for c in p_spec.get(key) or []
                      if c.get("name") not in t_by}
        for c in p_spec.get(key) or []:
            t = t_by.get(c.get("name"))
            if t is None:
                continue
            name = str(c.get("name"))
            t_paths = {m.get("mountPath") for m in t.get("volumeMounts") or []}
            extra = tuple(m for m in c.get("volumeMounts") or [] if m.get("mountPath")
                          not in t_paths)
            if extra:
                mounts[name] = extra
            t_env = list(t.get("env") or [])
            if list(c.get("env") or [])[:len(t_env)] == t_env and len(c.get("env") or []) > \
                    len(t_env):
                env[name] = tuple((c.get("env") or [])[len(t_env):])
            changed = {k: (t.get(k), c.get(k)) for k in set(c) | set(t)
                       if k not in ("volumeMounts", "env", *_UNCOMPARED)
                       and c.get(k) != t.get(k)}
            if changed:
                fields[name] = changed
    t_vols = {v.get("name") for v in t_spec.get("volumes") or []}
    volumes = {str(v.get("name")): v for v in p_spec.get("volumes") or []
               if v.get("name") not in t_vols}
    skip = {*_CONTAINER_LISTS, "volumes", "tolerations", "ephemeralContainers", *_POD_FILLED}
    pod_fields = {k: (t_spec.get(k), p_spec.get(k)) for k in set(p_spec) | set(t_spec)
                  if k not in skip and p_spec.get(k) != t_spec.get(k)}
    t_meta, p_meta = meta_of(template), meta_of(pod)
    labels = frozenset(set(p_meta.get("labels") or {}) - set(t_meta.get("labels") or {})
                       - _FILLED_LABELS)
    annotations = frozenset(set(p_meta.get("annotations") or {})
                            - set(t_meta.get("annotations") or {}))
    t_tolerations = list(t_spec.get("tolerations") or [])
    tolerations = tuple(t for t in p_spec.get("tolerations") or []
                        if t not in t_tolerations and not _is_default_toleration(t))
    return Admitted(workload, order, added, volumes, mounts, env, fields, pod_fields,
                    tolerations, labels, annotations)


def admitted(original: Obj, pods: Sequence[Obj]) -> tuple[Admitted, str]:
    """What admission added to the original Deployment's pods `pods` (the live pods of its
    current ReplicaSet), and why nothing is accepted when that is so ("" otherwise). Anyone
    who can create pods can make one look like the original's, so an addition counts only
    when every one of `pods` carries it the same way: a forged pod can take additions away,
    not add one. No pods: nothing is accepted."""
    name = str(meta_of(original).get("name") or "")
    template = (original.get("spec") or {}).get("template") or {}
    live = [p for p in pods if not meta_of(p).get("deletionTimestamp")]
    if not live:
        return NOTHING_ADMITTED, (f"deployment/{state.printable(name)} has no running pod "
                                  "to compare with")
    found = [_additions(template, p, name) for p in live]
    if any(f != found[0] for f in found[1:]):
        return NOTHING_ADMITTED, (f"the pods of deployment/{state.printable(name)} differ "
                                  "in what admission added to them")
    return found[0], ""


def _localised(value: Any, proxy: str, workload: str) -> Any:
    """`value` with the proxy Deployment's name read as the original's (what an injector
    writes about the workload: its name, its owner)."""
    if not proxy or not workload:
        return value
    if isinstance(value, str):
        return value.replace(proxy, workload)
    if isinstance(value, Mapping):
        return {k: _localised(v, proxy, workload) for k, v in value.items()}
    if isinstance(value, list):
        return [_localised(v, proxy, workload) for v in value]
    return value


# -- the comparison ---------------------------------------------------------------------------

def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _absent_ok(key: str, planned: Any) -> bool:
    """A planned value the API server drops (false, zero and empty are not written back)."""
    if key in _ABSENT_IS_NOT_FALSE:
        return planned is None
    return _empty(planned) or planned is False or (_is_int(planned) and planned == 0)


def _same(planned: Any, actual: Any, path: str, found: list[str]) -> None:
    """`actual` is `planned` with at most the API server's nested defaults added."""
    if isinstance(planned, Mapping) and isinstance(actual, Mapping):
        for key in sorted(set(planned) | set(actual), key=str):
            where = f"{path}.{key}"
            if key in planned and key in actual:
                _same(planned[key], actual[key], where, found)
            elif key in actual:
                value = actual[key]
                if not (_empty(value) or (key in _NESTED_FILLED
                                          and value == _NESTED_FILLED[key])):
                    found.append(f"{where} was added")
            elif not _absent_ok(str(key), planned[key]):
                found.append(f"{where} was removed")
    elif isinstance(planned, list) and isinstance(actual, list):
        if len(planned) != len(actual):
            found.append(f"{path} has {len(actual)} entries, the plan {len(planned)}")
            return
        for i, (p, a) in enumerate(zip(planned, actual, strict=True)):
            _same(p, a, f"{path}[{i}]", found)
    elif planned != actual or type(planned) is not type(actual):
        found.append(f"{path} differs from the plan")


def _differs(planned: Any, actual: Any) -> bool:
    found: list[str] = []
    _same(planned, actual, "", found)
    return bool(found)


def _is_token_volume(v: Obj) -> bool:
    """ServiceAccount admission's token volume, exactly as the API server writes it."""
    projected = v.get("projected")
    if (set(v) != {"name", "projected"} or not isinstance(projected, Mapping)
            or not str(v.get("name")).startswith(SA_TOKEN_VOLUME_PREFIX)
            or set(projected) - {"sources", "defaultMode"}
            or projected.get("defaultMode", 420) != 420):
        return False
    sources = list(projected.get("sources") or [])
    if len(sources) != 3:
        return False
    token = sources[0].get("serviceAccountToken") if isinstance(sources[0], Mapping) else None
    return (set(sources[0]) == {"serviceAccountToken"} and isinstance(token, Mapping)
            and set(token) == {"expirationSeconds", "path"} and token.get("path") == "token"
            and _is_int(token.get("expirationSeconds"))
            and all(not _differs(want, got)
                    for want, got in zip(_SA_TOKEN_SOURCES, sources[1:], strict=True)))


def _is_token_mount(m: Obj, tokens: set[str]) -> bool:
    return (m.get("name") in tokens and m.get("mountPath") == SA_TOKEN_PATH
            and m.get("readOnly") is True
            and set(m) <= {"name", "mountPath", "readOnly"})


@dataclass(frozen=True)
class _Ctx:
    admitted: Admitted
    proxy: str
    tokens: set[str]  # the names of the pod's token volumes (when the plan allows one)

    def local(self, value: Any) -> Any:
        return _localised(value, self.proxy, self.admitted.workload)


def _mounts_problems(planned: Sequence[Obj], actual: Sequence[Obj], where: str,
                     allowed: Sequence[Obj], ctx: _Ctx, found: list[str]) -> None:
    by_path = {m.get("mountPath"): m for m in planned}
    seen = set()
    for m in actual:
        path = m.get("mountPath")
        if path in by_path and path not in seen:
            seen.add(path)
            _same(by_path[path], m, f"{where}.volumeMounts[{path}]", found)
        elif not (_is_token_mount(m, ctx.tokens) or ctx.local(m) in allowed):
            found.append(f"{where} has an extra mount at {path}")
    for path in by_path:
        if path not in seen:
            found.append(f"{where}.volumeMounts[{path}] is missing")


def _env_problems(planned: Sequence[Obj], actual: Sequence[Obj], where: str,
                  allowed: Sequence[Obj], ctx: _Ctx, found: list[str]) -> None:
    """The planned variables in order, then only what admission added to the original's
    container (never one of the planned names: a later entry would override it)."""
    head = list(actual[:len(planned)])
    if len(head) < len(planned):
        found.append(f"{where}.env has {len(actual)} entries, the plan {len(planned)}")
        return
    _same(list(planned), head, f"{where}.env", found)
    names = {e.get("name") for e in planned}
    for e in actual[len(planned):]:
        if e.get("name") in names or ctx.local(e) not in allowed:
            found.append(f"{where}.env has an extra variable {e.get('name')}")


def _container_problems(planned: Obj, actual: Obj, where: str, ctx: _Ctx, *,
                        injected: bool = False) -> list[str]:
    found: list[str] = []
    name = str(planned.get("name"))
    adm = ctx.admitted
    mounts = () if injected else adm.mounts.get(name, ())
    env = () if injected else adm.env.get(name, ())
    changed = {} if injected else adm.fields.get(name, {})
    if injected:  # the original's pod's container, as the API server gave it, beside ours
        planned = _without_token({"containers": [planned]})["containers"][0]
        actual = ctx.local(actual)
    for key in sorted(set(planned) | set(actual), key=str):
        path = f"{where}.{key}"
        p, a = planned.get(key), actual.get(key)
        if key in _UNCOMPARED:
            continue
        if key in changed and changed[key][0] == p and changed[key][1] == ctx.local(a):
            continue  # admission changed it the same way on the original's own pods
        if key == "volumeMounts":
            _mounts_problems(p or [], a or [], where, mounts, ctx, found)
        elif key == "env":
            _env_problems(p or [], a or [], where, env, ctx, found)
        elif key not in actual:
            if not _absent_ok(str(key), p):
                found.append(f"{path} was removed")
        elif key not in planned:
            if not (_empty(a) or (key in _CONTAINER_FILLED and _CONTAINER_FILLED[key](a))):
                found.append(f"{path} was added")
        else:
            _same(p, a, path, found)
    return found


def _containers_problems(key: str, planned: Obj, actual: Obj, ctx: _Ctx) -> list[str]:
    found: list[str] = []
    mine = {c.get("name"): c for c in planned.get(key) or []}
    theirs = ctx.admitted.containers.get(key) or {}
    names = [c.get("name") for c in actual.get(key) or []]
    for c in actual.get(key) or []:
        name = c.get("name")
        where = f"spec.{key}[{name}]"
        if name in mine:
            found += _container_problems(mine[name], c, where, ctx)
        elif name in theirs:
            found += _container_problems(theirs[name], c, where, ctx, injected=True)
        else:
            found.append(f"spec.{key} has a container {name} that is neither in the plan nor "
                         f"added by admission to deployment/{ctx.admitted.workload or '?'}'s "
                         "own pods")
    for name in mine:
        if name not in names:
            found.append(f"spec.{key}[{name}] is missing")
    order = list(ctx.admitted.order.get(key) or mine)
    if all(n in order for n in names) and [n for n in order if n in names] != names:
        found.append(f"spec.{key} are not in the planned order")
    return found


def _is_default_toleration(a: Obj) -> bool:
    """One of DefaultTolerationSeconds admission's two tolerations."""
    return (a.get("key") in DEFAULT_TOLERATION_KEYS and a.get("operator") == "Exists"
            and a.get("effect") == "NoExecute" and _is_int(a.get("tolerationSeconds"))
            and set(a) == {"key", "operator", "effect", "tolerationSeconds"})


def _tolerations_problems(planned: Sequence[Obj], actual: Sequence[Obj],
                          admitted: Sequence[Obj]) -> list[str]:
    rest = list(actual)
    found: list[str] = []
    for t in planned:
        match = next((a for a in rest if not _differs(t, a)), None)
        if match is None:
            found.append(f"spec.tolerations lacks the planned {t.get('key')}")
        else:
            rest.remove(match)
    for a in rest:
        if not (_is_default_toleration(a) or a in admitted):
            found.append(f"spec.tolerations has an extra toleration {a.get('key')}")
    return found


def spec_problems(planned: Obj, actual: Obj, admitted: Admitted = NOTHING_ADMITTED,
                  proxy: str = "") -> list[str]:
    """How the pod spec `actual` differs from the planned pod template spec (empty: it does
    not). The whole spec is compared: every field equals the plan, or is one the API server
    fills in with its value (`_POD_FILLED`, `_CONTAINER_FILLED`, `_NESTED_FILLED`, the token
    volume and its mounts, the default tolerations), or was added by admission the same way
    to the original's own pods (`admitted`; `proxy`: the proxy Deployment's name, read as the
    original's in what admission wrote). Nothing else: no container, init container, debug
    container, volume, mount, variable, capability, sysctl or host namespace the plan lacks."""
    found: list[str] = []
    tokens = ({str(v.get("name")) for v in actual.get("volumes") or [] if _is_token_volume(v)}
              if planned.get("automountServiceAccountToken") is not False else set())
    ctx = _Ctx(admitted, proxy, tokens)
    for key in sorted(set(planned) | set(actual), key=str):
        p, a = planned.get(key), actual.get(key)
        if key in _CONTAINER_LISTS:
            found += _containers_problems(key, planned, actual, ctx)
        elif key == "ephemeralContainers":
            if a:
                found.append("spec.ephemeralContainers: the pod has debug containers added")
        elif key == "volumes":
            mine = {v.get("name"): v for v in p or []}
            for v in a or []:
                name = v.get("name")
                if name in mine:
                    _same(mine[name], v, f"spec.volumes[{name}]", found)
                elif not (name in tokens or (name in admitted.volumes and not _differs(
                        admitted.volumes[name], ctx.local(v)))):
                    found.append(f"spec.volumes has an extra volume {name}")
            for name in set(mine) - {v.get("name") for v in a or []}:
                found.append(f"spec.volumes[{name}] is missing")
        elif key == "tolerations":
            found += _tolerations_problems(p or [], a or [], admitted.tolerations)
        elif key in admitted.pod_fields and admitted.pod_fields[key] == (p, ctx.local(a)):
            continue  # admission changed it the same way on the original's own pods
        elif key not in actual:
            if not _absent_ok(str(key), p):
                found.append(f"spec.{key} was removed")
        elif key not in planned:
            if not (_empty(a) or (key in _POD_FILLED and _POD_FILLED[key](a, planned))):
                found.append(f"spec.{key} was added")
        else:
            _same(p, a, f"spec.{key}", found)
    return [state.printable(f, 300) for f in found]


def _meta_problems(planned: Obj, pod: Obj, admitted: Admitted) -> list[str]:
    """Labels and annotations: the plan's, the ReplicaSet's pod-template-hash, and the keys
    admission added to the original's own pods; nothing else (a label more can put the pod
    behind another Service, an annotation can ask the runtime or a controller for more, e.g.
    controller.kubernetes.io/pod-deletion-cost to have the genuine pod deleted first)."""
    found: list[str] = []
    meta = meta_of(pod)
    for kind, extra in (("labels", _FILLED_LABELS | admitted.labels),
                        ("annotations", admitted.annotations)):
        want = planned.get(kind) or {}
        have = meta.get(kind) or {}
        for key, value in want.items():
            if have.get(key) != value:
                found.append(f"its {kind[:-1]} {key} is not the planned {value}")
        for key in sorted(set(have) - set(want) - extra):
            found.append(f"it carries the {kind[:-1]} {key}, which the plan does not")
    return [state.printable(f, 300) for f in found]


def pod_problems(pod: Obj, proxy_uid: str, replicaset: Obj | None, planned_spec: Obj,
                 session: str, *, planned_meta: Obj | None = None,
                 admitted: Admitted = NOTHING_ADMITTED, proxy: str = "") -> list[str]:
    """Why `pod` is not provably a pod that runs bridge's plan (empty: it is).

    What proves it is the pod itself: its whole spec is the plan (`spec_problems`) and its
    labels and annotations are the planned template's (`planned_meta`; None: only the session
    label), so whoever created it, it runs nothing but bridge's sidecar with bridge's key and
    the original's own containers. Its ownership chain (a controller reference to a
    ReplicaSet, `replicaset` as read, controlled by the proxy Deployment bridge created, UID
    `proxy_uid`) is checked too, but proves nothing alone: anyone who can create pods can
    write an owner reference."""
    found = chain_problems(pod, proxy_uid, replicaset, session)
    found += _meta_problems(planned_meta if planned_meta is not None
                            else {"labels": {state.SESSION_LABEL: session}}, pod, admitted)
    found += spec_problems(planned_spec, pod.get("spec") or {}, admitted, proxy)
    return found


def chain_problems(pod: Obj, proxy_uid: str, replicaset: Obj | None,
                   session: str) -> list[str]:
    """Why `pod` does not claim to be the proxy ReplicaSet's (the session label, a controller
    reference to `replicaset`, which the proxy Deployment controls). A claim, not a proof."""
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
    return found


def describe(name: str, problems: Sequence[str], limit: int = 3) -> str:
    """One line naming the first few problems."""
    shown = "; ".join(problems[:limit])
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return f"{name}: {shown}{more}"


REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


def current_pods(original: Obj, replicasets: Sequence[Obj], pods: Sequence[P]) -> list[P]:
    """The pods of `original`'s current ReplicaSet (the one it controls, by UID, at its
    revision): what admission does to the app now. Each such pod may still be a neighbour's
    copy claiming that ReplicaSet (`admitted` takes that into account)."""
    uid = meta_of(original).get("uid")
    revision = (meta_of(original).get("annotations") or {}).get(REVISION_ANNOTATION)
    mine = [rs for rs in replicasets
            if (controller_of(rs) or {}).get("uid") == uid and uid
            and (revision is None
                 or (meta_of(rs).get("annotations") or {}).get(REVISION_ANNOTATION) == revision)]
    if len(mine) != 1:
        return []
    rs_uid = meta_of(mine[0]).get("uid")
    return [p for p in pods if rs_uid and (controller_of(p) or {}).get("uid") == rs_uid
            and (controller_of(p) or {}).get("kind") == "ReplicaSet"]
