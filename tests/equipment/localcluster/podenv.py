"""A container's environment and command line, as the kubelet builds them. Pure functions.

Follows the kubelet (`makeEnvironmentVariables`): `envFrom` sources first (with `prefix`), then
`env` entries in order (a `value` is `$(VAR)`-expanded against what is defined so far plus the
service variables; `valueFrom` is resolved), then the service-link variables of the Services
that exist when the container starts, for names not already set. A missing non-optional
ConfigMap, Secret or key is a `ConfigError`: the container stays Waiting with reason
CreateContainerConfigError.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Obj = dict[str, Any]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MASTER_SERVICE_NAMESPACE = "default"


class ConfigError(Exception):
    """The container's configuration cannot be built (kubelet: CreateContainerConfigError)."""


# -- $(VAR) expansion ----------------------------------------------------------------------


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Kubernetes `$(VAR)` expansion: defined variables are replaced, undefined references are
    kept verbatim, `$$` is a literal `$` (so `$$(VAR)` gives `$(VAR)`), other `$` stay as they are.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                value = lookup(name)
                out.append(value if value is not None else f"$({name})")
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def expand_all(items: Iterable[str], env: Mapping[str, str]) -> list[str]:
    return [expand(item, env.get) for item in items]


# -- service links -------------------------------------------------------------------------


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_link_variables(service: Obj) -> dict[str, str]:
    """`<NAME>_SERVICE_HOST`, `_SERVICE_PORT[_<PORT>]` and the docker-link style `<NAME>_PORT*`."""
    spec = service.get("spec", {})
    ip = spec.get("clusterIP")
    ports = spec.get("ports") or []
    if not ip or ip == "None" or not ports:
        return {}
    name = _env_name(service["metadata"]["name"])
    env = {f"{name}_SERVICE_HOST": ip, f"{name}_SERVICE_PORT": str(ports[0]["port"])}
    for port in ports:
        if port.get("name"):
            env[f"{name}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
    for i, port in enumerate(ports):
        proto = (port.get("protocol") or "TCP").upper()
        url = f"{proto.lower()}://{ip}:{port['port']}"
        if i == 0:
            env[f"{name}_PORT"] = url
        prefix = f"{name}_PORT_{port['port']}_{proto}"
        env[prefix] = url
        env[f"{prefix}_PROTO"] = proto.lower()
        env[f"{prefix}_PORT"] = str(port["port"])
        env[f"{prefix}_ADDR"] = ip
    return env


def service_environment(pod: Obj, services: Iterable[Obj]) -> dict[str, str]:
    """Variables for the Services of the pod's namespace (when `enableServiceLinks` is not false)
    and, always, the `kubernetes` Service of the `default` namespace."""
    namespace = pod["metadata"].get("namespace", "default")
    links = pod.get("spec", {}).get("enableServiceLinks", True) is not False
    chosen: dict[str, Obj] = {}
    for svc in services:
        meta = svc["metadata"]
        ns = meta.get("namespace", "default")
        if ns == MASTER_SERVICE_NAMESPACE and meta["name"] == "kubernetes":
            chosen.setdefault("kubernetes", svc)
        if ns == namespace and links:
            chosen[meta["name"]] = svc
    env: dict[str, str] = {}
    for name in sorted(chosen):
        env.update(service_link_variables(chosen[name]))
    return env


# -- env and envFrom -----------------------------------------------------------------------


def _find(objs: Iterable[Obj], name: str) -> Obj | None:
    return next((o for o in objs if o["metadata"]["name"] == name), None)


def _secret_data(secret: Obj) -> dict[str, str]:
    try:
        data = {
            k: base64.b64decode(v, validate=True).decode("utf-8", errors="replace")
            for k, v in (secret.get("data") or {}).items()
        }
    except (ValueError, TypeError) as exc:
        raise ConfigError(f'secret "{secret["metadata"]["name"]}" has data that is not '
                          f"base64: {exc}") from exc
    data.update(secret.get("stringData") or {})
    return data


def _referenced_data(ref: Obj, objs: list[Obj], kind: str) -> dict[str, str] | None:
    """The data of the ConfigMap or Secret (`kind`) that `ref` names among `objs`; None when it
    is missing and the reference is optional."""
    found = _find(objs, ref["name"])
    if found is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    return _secret_data(found) if kind == "Secret" else dict(found.get("data") or {})


def _referenced_key(ref: Obj, objs: list[Obj], kind: str, namespace: str) -> str | None:
    """The value of the key that `ref` names in a ConfigMap or Secret; None when it or its
    key is missing and the reference is optional."""
    data = _referenced_data(ref, objs, kind)
    if data is None:
        return None
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
    return str(data[ref["key"]])


def _field_ref(path: str, pod: Obj, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod["metadata"], pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    for key in ("labels", "annotations"):
        prefix = f"metadata.{key}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str((meta.get(key) or {}).get(path[len(prefix) : -2], ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise ConfigError(f'unsupported fieldRef fieldPath "{path}"')


def container_environment(
    pod: Obj,
    container: Obj,
    *,
    configmaps: Iterable[Obj],
    secrets: Iterable[Obj],
    services: Iterable[Obj],
    pod_ip: str,
    host_ip: str,
) -> dict[str, str]:
    """The variables Kubernetes gives `container` (no runtime defaults such as PATH)."""
    configmaps, secrets = list(configmaps), list(secrets)
    namespace = pod["metadata"].get("namespace", "default")
    service_env = service_environment(pod, services)
    env: dict[str, str] = {}

    def lookup(name: str) -> str | None:
        return env[name] if name in env else service_env.get(name)

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if "configMapRef" in source:
            data = _referenced_data(source["configMapRef"], configmaps, "ConfigMap")
        elif "secretRef" in source:
            data = _referenced_data(source["secretRef"], secrets, "Secret")
        else:
            continue
        if data is None:
            continue  # optional reference to something missing: nothing added
        for key, value in data.items():
            env[prefix + key] = value

    for var in container.get("env") or []:
        name = var["name"]
        value = var.get("value")
        source = var.get("valueFrom")
        if value:
            env[name] = expand(value, lookup)
        elif source:
            resolved = _value_from(source, namespace, pod, configmaps, secrets, pod_ip, host_ip)
            if resolved is None:
                continue  # optional reference to something missing: not set
            env[name] = resolved
        else:
            env[name] = ""

    for key, value in service_env.items():
        env.setdefault(key, value)
    return env


def _value_from(
    source: Obj,
    namespace: str,
    pod: Obj,
    configmaps: list[Obj],
    secrets: list[Obj],
    pod_ip: str,
    host_ip: str,
) -> str | None:
    if "configMapKeyRef" in source:
        return _referenced_key(source["configMapKeyRef"], configmaps, "ConfigMap", namespace)
    if "secretKeyRef" in source:
        return _referenced_key(source["secretKeyRef"], secrets, "Secret", namespace)
    if "fieldRef" in source:
        return _field_ref(source["fieldRef"]["fieldPath"], pod, pod_ip, host_ip)
    if "resourceFieldRef" in source:
        raise ConfigError("resourceFieldRef is not supported by the local test cluster")
    return None


def process_environment(container_env: Mapping[str, str], pod_name: str) -> dict[str, str]:
    """What a container runtime adds: PATH (unless set) and HOSTNAME (the pod name)."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": pod_name}
    env.update(container_env)
    return env
