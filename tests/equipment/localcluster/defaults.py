"""Defaulting and validation of objects, as the API server does on create and update (pure).

Only the defaults clients read back and the checks clients can trip over are modelled.
"""

from __future__ import annotations

import base64
import copy
import re
from typing import Any

from .errors import ApiError, invalid
from .resources import BY_KEY
from .selectors import labels_match, selector_from_label_selector

Obj = dict[str, Any]

_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
_QUALIFIED_NAME_RE = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    f"validation is '{_QUALIFIED_NAME_RE}')"
)
_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035_RE = r"[a-z]([-a-z0-9]*[a-z0-9])?"


def is_subdomain(name: str) -> bool:
    return len(name) <= 253 and re.fullmatch(rf"{_LABEL_RE}(\.{_LABEL_RE})*", name) is not None


def is_label(name: str) -> bool:
    return len(name) <= 63 and re.fullmatch(_LABEL_RE, name) is not None


def is_dns1035(name: str) -> bool:
    return len(name) <= 63 and re.fullmatch(_DNS1035_RE, name) is not None


def qualified_name_errors(value: str) -> list[str]:
    """Why `value` is not a qualified name (an optional DNS subdomain prefix and '/', then a
    name of at most 63 characters), in apimachinery's IsQualifiedName words; [] if it is."""
    parts = value.split("/")
    if len(parts) > 2:
        return [f"a qualified name {_QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix "
                "and '/' (e.g. 'example.com/MyName')"]
    errors = []
    if len(parts) == 2:
        if not parts[0]:
            errors.append("prefix part must be non-empty")
        elif not is_subdomain(parts[0]):
            errors.append(f"prefix part {_SUBDOMAIN_MSG}")
    name = parts[-1]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if re.fullmatch(_QUALIFIED_NAME_RE, name) is None:
        errors.append(f"name part {_QUALIFIED_NAME_MSG}")
    return errors


# -- defaulting ----------------------------------------------------------------------------

def _default_probe(probe: Obj | None) -> None:
    if not probe:
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    if "httpGet" in probe:
        probe["httpGet"].setdefault("scheme", "HTTP")
        probe["httpGet"].setdefault("path", "/")


def _pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_container(c: Obj) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("imagePullPolicy", _pull_policy(c.get("image", "")))
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for env in c.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef")
        if field_ref is not None:
            field_ref.setdefault("apiVersion", "v1")
    for name in ("readinessProbe", "livenessProbe", "startupProbe"):
        _default_probe(c.get(name))


def default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        _default_container(c)
    for vol in spec.get("volumes") or []:
        for kind in ("configMap", "secret"):
            if kind in vol:
                vol[kind].setdefault("defaultMode", 420)


def _default_pod(obj: Obj) -> None:
    default_pod_spec(obj.setdefault("spec", {}))
    obj["spec"].setdefault("nodeName", "bridge-node")
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", "BestEffort")


def _default_template(spec: Obj) -> None:
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {})
    default_pod_spec(template.setdefault("spec", {}))


def _default_deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _default_template(spec)
    obj.setdefault("status", {})


def _default_replicaset(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    _default_template(spec)
    obj.setdefault("status", {"replicas": 0})


def _default_service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    obj.setdefault("status", {"loadBalancer": {}})


def _default_secret(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _default_namespace(obj: Obj) -> None:
    meta = obj.setdefault("metadata", {})
    if meta.get("name"):
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


_DEFAULTERS = {
    "pods": _default_pod,
    "apps/deployments": _default_deployment,
    "apps/replicasets": _default_replicaset,
    "services": _default_service,
    "secrets": _default_secret,
    "namespaces": _default_namespace,
}


def apply_defaults(resource: str, obj: Obj) -> Obj:
    obj = copy.deepcopy(obj)
    r = BY_KEY[resource]
    obj["apiVersion"], obj["kind"] = r.api_version, r.kind
    defaulter = _DEFAULTERS.get(resource)
    if defaulter is not None:
        defaulter(obj)
    return obj


# -- validation ----------------------------------------------------------------------------

def _name_causes(resource: str, name: str) -> list[Obj]:
    if resource == "services":
        ok, msg = is_dns1035(name), _DNS1035_MSG
    elif resource == "namespaces":
        ok, msg = is_label(name), _LABEL_MSG
    else:
        ok, msg = is_subdomain(name), _SUBDOMAIN_MSG
    if ok:
        return []
    return [{"type": "Invalid", "field": "metadata.name", "value": name, "detail": msg}]


def _pod_spec_causes(spec: Obj, prefix: str) -> list[Obj]:
    causes: list[Obj] = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append({"type": "Required", "field": f"{prefix}.containers"})
    seen: set[str] = set()
    for i, c in enumerate(containers):
        field = f"{prefix}.containers[{i}]"
        name = c.get("name", "")
        if not name:
            causes.append({"type": "Required", "field": f"{field}.name"})
        elif not is_label(name):
            causes.append({"type": "Invalid", "field": f"{field}.name", "value": name,
                           "detail": _LABEL_MSG})
        elif name in seen:
            causes.append({"type": "Duplicate", "field": f"{field}.name", "value": name})
        seen.add(name)
        if not c.get("image"):
            causes.append({"type": "Required", "field": f"{field}.image"})
        for j, port in enumerate(c.get("ports") or []):
            cp = port.get("containerPort")
            if not isinstance(cp, int) or not 0 < cp < 65536:
                causes.append({"type": "Invalid" if cp else "Required",
                               "field": f"{field}.ports[{j}].containerPort", "value": cp,
                               "detail": "must be between 1 and 65535, inclusive"})
    for i, gate in enumerate(spec.get("readinessGates") or []):
        condition_type = gate.get("conditionType", "") if isinstance(gate, dict) else ""
        causes += [{"type": "Invalid", "field": f"{prefix}.readinessGates[{i}].conditionType",
                    "value": condition_type, "detail": detail}
                   for detail in qualified_name_errors(str(condition_type))]
    policy = spec.get("restartPolicy")
    if policy not in ("Always", "OnFailure", "Never"):
        causes.append({"type": "NotSupported", "field": f"{prefix}.restartPolicy",
                       "value": policy,
                       "detail": 'supported values: "Always", "OnFailure", "Never"'})
    return causes


def _workload_causes(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    causes: list[Obj] = []
    if spec.get("replicas", 0) < 0:
        causes.append({"type": "Invalid", "field": "spec.replicas", "value": spec["replicas"],
                       "detail": "must be greater than or equal to 0"})
    selector = spec.get("selector")
    template_labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append({"type": "Required", "field": "spec.selector"})
    else:
        try:
            reqs = selector_from_label_selector(selector) or []
        except ApiError as e:
            reqs = []
            causes.append({"type": "Invalid", "field": "spec.selector", "value": selector,
                           "detail": e.message})
        if reqs and not labels_match(reqs, template_labels):
            causes.append({"type": "Invalid", "field": "spec.template.metadata.labels",
                           "value": template_labels,
                           "detail": "`selector` does not match template `labels`"})
    causes += _pod_spec_causes(spec.get("template", {}).get("spec", {}), "spec.template.spec")
    return causes


def _service_causes(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    causes: list[Obj] = []
    if spec.get("type") not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        causes.append({"type": "NotSupported", "field": "spec.type", "value": spec.get("type"),
                       "detail": 'supported values: "ClusterIP", "ExternalName", '
                                 '"LoadBalancer", "NodePort"'})
    ports = spec.get("ports") or []
    if not ports and spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None":
        causes.append({"type": "Required", "field": "spec.ports"})
    names: set[str] = set()
    for i, port in enumerate(ports):
        p = port.get("port")
        if not isinstance(p, int) or not 0 < p < 65536:
            causes.append({"type": "Invalid", "field": f"spec.ports[{i}].port", "value": p,
                           "detail": "must be between 1 and 65535, inclusive"})
        if len(ports) > 1 and not port.get("name"):
            causes.append({"type": "Required", "field": f"spec.ports[{i}].name"})
        if port.get("name") in names:
            causes.append({"type": "Duplicate", "field": f"spec.ports[{i}].name",
                           "value": port["name"]})
        names.add(port.get("name", ""))
    return causes


def validate(resource: str, obj: Obj, old: Obj | None = None) -> None:
    """Raise 422 Invalid, worded like Kubernetes, when `obj` may not be stored."""
    meta = obj.get("metadata", {})
    name = meta.get("name") or meta.get("generateName", "")
    causes = _name_causes(resource, meta["name"]) if meta.get("name") else []
    if resource == "pods":
        causes += _pod_spec_causes(obj.get("spec", {}), "spec")
    elif resource in ("apps/deployments", "apps/replicasets"):
        causes += _workload_causes(obj)
    elif resource == "services":
        causes += _service_causes(obj)
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(
                r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value):
            causes.append({"type": "Invalid", "field": "metadata.labels", "value": value,
                           "detail": "a valid label must be an empty string or consist of "
                                     "alphanumeric characters, '-', '_' or '.', and must start "
                                     "and end with an alphanumeric character"})
        del key
    if old is not None:
        causes += _immutable_causes(resource, obj, old)
    if causes:
        raise invalid(BY_KEY[resource].qualified_kind, name, causes)


def _immutable_causes(resource: str, new: Obj, old: Obj) -> list[Obj]:
    causes: list[Obj] = []
    if resource in ("apps/deployments", "apps/replicasets"):
        if new.get("spec", {}).get("selector") != old.get("spec", {}).get("selector"):
            causes.append({"type": "Invalid", "field": "spec.selector",
                           "value": new.get("spec", {}).get("selector"),
                           "detail": "field is immutable"})
    if resource == "pods":
        def masked(spec: Obj) -> Obj:
            spec = copy.deepcopy(spec)
            for c in spec.get("containers") or []:
                c.pop("image", None)
            for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
                spec.pop(key, None)
            return spec
        if masked(new.get("spec", {})) != masked(old.get("spec", {})):
            causes.append({"type": "Forbidden", "field": "spec",
                           "detail": "pod updates may not change fields other than "
                                     "`spec.containers[*].image`, "
                                     "`spec.activeDeadlineSeconds`, `spec.tolerations` (only "
                                     "additions to existing tolerations), "
                                     "`spec.terminationGracePeriodSeconds` (allow it to be set "
                                     "to 1 if it was previously negative)"})
    return causes
