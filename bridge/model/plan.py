"""The swap plan: from the original Deployment and the options to the proxy Deployment manifest.

Pure: no I/O. The proxy is a copy of the original pod template (same labels, so the Service
selects it; same env/envFrom/volumes, so Kubernetes builds the same environment) in which the
chosen container runs the sidecar instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError
from bridge.model import resources, state
from bridge.model.target import PortMap
from sidecar import protocol

Obj = Mapping[str, Any]

UNPRIVILEGED_PORT_SYSCTL = "net.ipv4.ip_unprivileged_port_start"
READY_PERIOD_SECONDS = 1
# The sidecar image brings its own entrypoint and working directory; the app's probes and hooks
# would fail against it (a failing liveness probe would restart the tunnel away).
_REMOVED_FROM_CONTAINER = ("command", "args", "workingDir", "livenessProbe", "readinessProbe",
                           "startupProbe", "lifecycle")


@dataclass(frozen=True)
class Options:
    container: str  # name of the container the sidecar replaces
    ports: Sequence[PortMap]
    session: str  # short random id
    owner: str  # user@host
    authorized_key: str  # OpenSSH public-key line of this session's client key
    image: str = protocol.DEFAULT_IMAGE
    # The pod's service-account token is mounted only when the user asks for the pod's files
    # (the token is one of them); otherwise the proxy pod gets no API credentials.
    service_account_token: bool = False
    # Templates that share the node's network/PID/IPC namespaces or run a privileged
    # container are refused unless the user allows them (--allow-host-access).
    allow_host_access: bool = False
    # direct-tcpip (the command's outbound connections leaving from the pod); False for
    # `--outbound none`: the sidecar refuses every such channel.
    direct_tcpip: bool = True
    # [realbeh] the proxy container's resources (bridge.model.resources.sidecar_resources, fitted to
    # the namespace's LimitRanges); None: the defaults for a namespace without LimitRange
    resources: Mapping[str, Any] | None = None
    files: bool = False  # serve the container's volume mounts to the laptop (issue 15)
    files_writable: bool = False  # --mount-rw: writable where the volume mount is


class UnsafeTemplate(BridgeError, ValueError):
    """The pod template gives the proxy pod access to the node; the message says why."""


# The proxy container's own security context: none of the app container's is copied (it may be
# privileged, run as root or add capabilities). The sidecar image runs as this user; ports
# below 1024 come from the pod's net.ipv4.ip_unprivileged_port_start sysctl, not a capability.
SIDECAR_UID = 10001
SIDECAR_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": SIDECAR_UID,
    "runAsGroup": SIDECAR_UID,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
_HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")


MAX_NAME = 63  # a DNS-1123 label, and a label value


def _fit(name: str, limit: int) -> str:
    """`name` if it fits in `limit` characters, else a prefix of it plus a short hash."""
    if len(name) <= limit:
        return name
    h = hashlib.sha256(name.encode()).hexdigest()[:6]
    return name[: limit - 7].rstrip("-") + "-" + h


def label_value(name: str) -> str:
    """The value of the proxy-for label for deployment `name` (at most 63 characters)."""
    return _fit(name, MAX_NAME)


def proxy_name(original: str, session: str) -> str:
    """`<original>-bridge-<session>`, shortened with a hash to stay a valid 63-char name."""
    suffix = f"-bridge-{session}"
    return _fit(original, MAX_NAME - len(suffix)) + suffix


@dataclass(frozen=True)
class ControlPorts:
    """The sidecar's own ports inside the proxy pod: SSH (the port-forward's target) and the
    readiness HTTP endpoint."""

    ssh: int = protocol.DEFAULT_SSH_PORT
    health: int = protocol.DEFAULT_HEALTH_PORT


def _declared_ports(pod_spec: Obj) -> set[int]:
    found: set[int] = set()
    for key in ("initContainers", "containers"):
        for c in pod_spec.get(key) or []:
            for p in c.get("ports") or []:
                if isinstance(p.get("containerPort"), int):
                    found.add(p["containerPort"])
    return found


def control_ports(pod_spec: Obj, forwarded: Sequence[PortMap]) -> ControlPorts:
    """The default 8022/8023 unless the pod uses them: every container of a pod shares one
    network namespace, so the sidecar must not take a port the app or another container
    declares (or one we forward). Then the next free pair up from 18022."""
    taken = _declared_ports(pod_spec) | {p.remote for p in forwarded}
    defaults = ControlPorts()
    if defaults.ssh not in taken and defaults.health not in taken:
        return defaults
    candidate = 18022
    while candidate in taken or candidate + 1 in taken:
        candidate += 2
    return ControlPorts(ssh=candidate, health=candidate + 1)


def ssh_port_of(proxy: Obj, container: str) -> int:
    """The sidecar's SSH port as the proxy manifest (or its pod) sets it."""
    spec = proxy.get("spec", {})
    pod_spec = spec.get("template", {}).get("spec", spec)  # a Deployment, or a pod's spec
    for c in pod_spec.get("containers") or []:
        if c.get("name") == container:
            for e in c.get("env") or []:
                if e.get("name") == protocol.ENV_SSH_PORT:
                    return int(e["value"])
    return protocol.DEFAULT_SSH_PORT


# --- the pod's files (issue 15) ---------------------------------------------------------------

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Volumes that reach into the node rather than the pod: never mounted into the sidecar.
NODE_LEVEL_VOLUMES = ("hostPath", "gitRepo")


@dataclass(frozen=True)
class FilesPlan:
    volume_mounts: list[dict[str, Any]]  # the sidecar container's volumeMounts
    served: list[dict[str, Any]]  # what the sidecar serves (protocol.ENV_MOUNTS)
    skipped: list[str]  # mount paths left out, with the reason


def files_plan(pod_spec: Obj, container: Obj, opts: Options) -> FilesPlan:
    """Which of the swapped container's volume mounts the sidecar mounts and serves.

    Without files: none (the sidecar needs none). With: every mount of the container at its
    path, read-only unless --mount-rw was asked and the mount is writable, except node-level
    volumes (hostPath, gitRepo); plus the service-account token Kubernetes mounts into every
    container unless automount is off."""
    if not opts.files:
        return FilesPlan([], [], [])
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or [] if isinstance(v, dict)}
    mounts: list[dict[str, Any]] = []
    served: list[dict[str, Any]] = []
    skipped: list[str] = []
    for vm in container.get("volumeMounts") or []:
        path, name = vm.get("mountPath"), vm.get("name")
        if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
            continue
        volume = volumes.get(name)
        if volume is None:
            skipped.append(f"{path} (no volume {name!r} in the pod)")
            continue
        kind = next((k for k in NODE_LEVEL_VOLUMES if k in volume), None)
        if kind:
            skipped.append(f"{path} (a {kind} volume: the node's files are not served)")
            continue
        writable = opts.files_writable and not vm.get("readOnly", False)
        new = {"name": name, "mountPath": path, "readOnly": not writable}
        for key in ("subPath", "subPathExpr"):
            if key in vm:
                new[key] = vm[key]
        mounts.append(new)
        served.append({"path": path.rstrip("/"), "writable": writable})
    if pod_spec.get("automountServiceAccountToken") is not False and not any(
            m["path"] == SERVICE_ACCOUNT_DIR for m in served):
        served.append({"path": SERVICE_ACCOUNT_DIR, "writable": False})
    return FilesPlan(mounts, served, skipped)


# What the sidecar's own process must not run with, though the app's container has it: the
# dynamic loader's variables (glibc 2.36's ld.so), the C library's (its unsecvars list: what
# it drops for set-uid programs), OpenSSL's (a configuration loads providers: code) and
# Python's (a path, a start-up file, a warnings filter importing a module...). The sidecar is
# `python -m sidecar` (asyncssh, cryptography): any of these in its environment could run code
# in it or break it, before any line of it runs. PATH too: the runtime looks the image's
# `python` up in it. Each is blanked (PATH: set to the runtime's default) after the app's env
# and envFrom, its value kept under protocol.SHIELD_PREFIX for `env` to serve. Every name here
# is checked to mean "unset" when empty (tests/sidecar/test_podenv_shield.py); ld.so's
# presence switches (LD_SHOW_AUXV, LD_TRACE_LOADED_OBJECTS, LD_DYNAMIC_WEAK) are not here: a
# pod spec cannot unset a variable, an empty one turns them on, and they only break a process.
SIDECAR_SHIELDED: tuple[str, ...] = tuple("""
    LD_PRELOAD LD_LIBRARY_PATH LD_AUDIT LD_BIND_NOT LD_BIND_NOW LD_DEBUG LD_DEBUG_OUTPUT
    LD_HWCAP_MASK LD_ORIGIN_PATH LD_PROFILE LD_PROFILE_OUTPUT LD_USE_LOAD_BIAS LD_VERBOSE
    LD_WARN LD_ASSUME_KERNEL LD_PREFER_MAP_32BIT_EXEC
    GCONV_PATH GETCONF_DIR GLIBC_TUNABLES LOCPATH NLSPATH MALLOC_TRACE MALLOC_CHECK_
    MALLOC_PERTURB_ MALLOC_TOP_PAD_ MALLOC_MMAP_THRESHOLD_ MALLOC_TRIM_THRESHOLD_ MALLOC_MMAP_MAX_
    MALLOC_ARENA_MAX MALLOC_ARENA_TEST
    OPENSSL_CONF OPENSSL_MODULES OPENSSL_ENGINES OPENSSL_ia32cap OPENSSL_armcap
    PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONINSPECT PYTHONUSERBASE PYTHONNOUSERSITE
    PYTHONWARNINGS PYTHONBREAKPOINT PYTHONPLATLIBDIR PYTHONEXECUTABLE PYTHONMALLOC
    PYTHONMALLOCSTATS PYTHONPYCACHEPREFIX PYTHONSAFEPATH PYTHONDEVMODE PYTHONOPTIMIZE
    PYTHONVERBOSE PYTHONDEBUG PYTHONIOENCODING PYTHONUTF8 PYTHONCOERCECLOCALE PYTHONCASEOK
    PYTHONTRACEMALLOC PYTHONPROFILEIMPORTTIME PYTHONASYNCIODEBUG PYTHONINTMAXSTRDIGITS
    PYTHONFAULTHANDLER PYTHONPERFSUPPORT PYTHON_FROZEN_MODULES PYTHON_GIL PYTHON_CPU_COUNT
    PATH
""".split())
# The runtime's default PATH (the Docker/containerd default; the sidecar image's python is in it).
SIDECAR_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _shield_env() -> list[dict[str, str]]:
    """The entries that keep the app's SIDECAR_SHIELDED variables from the sidecar's process:
    each name's value copied under the prefix (the kubelet expands `$(NAME)` from the app's
    env and envFrom above), then the name itself blanked (an entry with no value is "")."""
    out: list[dict[str, str]] = []
    for name in SIDECAR_SHIELDED:
        out.append({"name": protocol.SHIELD_PREFIX + name, "value": f"$({name})"})
        out.append({"name": name, "value": SIDECAR_PATH} if name == "PATH" else {"name": name})
    return out


def _sidecar_env(opts: Options, ports: ControlPorts) -> list[dict[str, str]]:
    """Every sidecar setting, set explicitly: the proxy container inherits the app's env and
    envFrom, and an app variable that happened to be named like a setting (BRIDGE_BIND=0.0.0.0
    would expose SSH on the pod IP) must never configure the sidecar."""
    return [
        {"name": protocol.ENV_AUTHORIZED_KEY, "value": opts.authorized_key},
        {"name": protocol.ENV_PORTS, "value": ",".join(str(p.remote) for p in opts.ports)},
        {"name": protocol.ENV_SSH_PORT, "value": str(ports.ssh)},
        {"name": protocol.ENV_HEALTH_PORT, "value": str(ports.health)},
        {"name": protocol.ENV_BIND, "value": protocol.DEFAULT_BIND},
        {"name": protocol.ENV_DRAIN_SECONDS, "value": str(protocol.DEFAULT_DRAIN_SECONDS)},
        {"name": protocol.ENV_KEEPALIVE_SECONDS,
         "value": str(protocol.DEFAULT_KEEPALIVE_SECONDS)},
        {"name": protocol.ENV_DIRECT_TCPIP, "value": "on" if opts.direct_tcpip else "off"},
        {"name": protocol.ENV_MOUNTS, "value": ""},  # set by plan_proxy when files are asked
    ]


def _sidecar_container(original: Obj, opts: Options, ports: ControlPorts) -> dict[str, Any]:
    c = copy.deepcopy(dict(original))
    for key in _REMOVED_FROM_CONTAINER:
        c.pop(key, None)
    c["image"] = opts.image
    c["imagePullPolicy"] = "IfNotPresent"
    c["securityContext"] = copy.deepcopy(SIDECAR_SECURITY_CONTEXT)
    if c.get("ports"):  # the sidecar binds them in the pod, never on the node
        c["ports"] = [{k: v for k, v in p.items() if k not in ("hostPort", "hostIP")}
                      for p in c["ports"]]
    # [realbeh] small explicit resources fit for the sidecar, never the app's
    c["resources"] = copy.deepcopy(dict(opts.resources if opts.resources is not None
                                        else resources.sidecar_resources()))
    settings = _sidecar_env(opts, ports)
    ours = {e["name"] for e in settings}
    app_env = [e for e in c.get("env") or [] if e.get("name") not in ours
               and not str(e.get("name", "")).startswith(protocol.SHIELD_PREFIX)]
    c["env"] = app_env + _shield_env() + settings
    c["readinessProbe"] = {
        "httpGet": {"path": protocol.READY_PATH, "port": ports.health},
        "periodSeconds": READY_PERIOD_SECONDS,
        "failureThreshold": 1,
        "successThreshold": 1,
        "timeoutSeconds": 1,
    }
    return c


def _with_files(pod_spec: dict[str, Any], opts: Options) -> None:
    """The sidecar container's volumeMounts and its mount list (issue 15)."""
    for c in pod_spec["containers"]:
        if c.get("name") != opts.container:
            continue
        fp = files_plan(pod_spec, c, opts)  # c still has the original's volumeMounts
        c["volumeMounts"] = fp.volume_mounts
        if not fp.volume_mounts:
            c.pop("volumeMounts")
        for e in c["env"]:
            if e["name"] == protocol.ENV_MOUNTS:
                e["value"] = json.dumps(fp.served) if fp.served else ""
        c.pop("volumeDevices", None)


def _with_sysctl(pod_spec: dict[str, Any], name: str, value: str) -> None:
    sc = pod_spec.setdefault("securityContext", {}) or {}
    pod_spec["securityContext"] = sc
    sysctls = [s for s in sc.get("sysctls") or [] if s.get("name") != name]
    sysctls.append({"name": name, "value": value})
    sc["sysctls"] = sysctls


def host_access(pod_spec: Obj) -> list[str]:
    """What in this pod spec reaches the node: host namespaces, privileged containers."""
    found = [f"{key}: true" for key in _HOST_NAMESPACES if pod_spec.get(key)]
    for key in ("initContainers", "containers"):
        for c in pod_spec.get(key) or []:
            if (c.get("securityContext") or {}).get("privileged"):
                found.append(f"container {c.get('name')} is privileged")
    return found


def _harden(pod_spec: dict[str, Any], opts: Options) -> None:
    """The service-account token stays off the proxy pod unless the user asked for the pod's
    files (the token is one of them): the proxy pod is reachable from the laptop, so it gets
    no API credentials of its own otherwise (the pod's other containers lose it too)."""
    if not (opts.service_account_token or opts.files):
        pod_spec["automountServiceAccountToken"] = False


def plan_proxy(original: Obj, opts: Options) -> dict[str, Any]:
    """The proxy Deployment manifest for `original` under these options."""
    meta = original.get("metadata", {})
    name = str(meta["name"])
    spec = original.get("spec", {})
    template = copy.deepcopy(dict(spec.get("template") or {}))
    tmeta = template.setdefault("metadata", {})
    labels = dict(tmeta.get("labels") or {})
    labels[state.SESSION_LABEL] = opts.session
    tmeta["labels"] = labels
    pod_spec = template.setdefault("spec", {})
    reaching = host_access(pod_spec)
    if reaching and not opts.allow_host_access:
        raise UnsafeTemplate(
            f"the pod template of deployment {name!r} gives its pods access to the node ("
            + ", ".join(reaching) + "): the proxy pod would expose the tunnel and the pod's "
            "environment there; pass --allow-host-access if that is intended")
    ports = control_ports(pod_spec, opts.ports)
    found = False
    new_containers = []
    for c in pod_spec.get("containers") or []:
        if c.get("name") == opts.container:
            new_containers.append(_sidecar_container(c, opts, ports))
            found = True
        else:
            new_containers.append(c)
    if not found:
        raise ValueError(f"no container {opts.container!r} in deployment {name!r}")
    pod_spec["containers"] = new_containers
    _with_files(pod_spec, opts)
    _harden(pod_spec, opts)
    if any(p.remote < 1024 for p in opts.ports):
        _with_sysctl(pod_spec, UNPRIVILEGED_PORT_SYSCTL, "0")

    selector = copy.deepcopy(dict(spec.get("selector") or {}))
    match_labels = dict(selector.get("matchLabels") or {})
    match_labels[state.SESSION_LABEL] = opts.session
    selector["matchLabels"] = match_labels

    proxy_labels = {
        state.MANAGED_BY_LABEL: state.MANAGED_BY,
        # a label value has at most 63 characters, a Deployment name up to 253: the label marks
        # the proxy, the annotation below carries the full name
        state.PROXY_FOR_LABEL: label_value(name),
        state.SESSION_LABEL: opts.session,
    }
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": proxy_name(name, opts.session),
            "namespace": meta.get("namespace"),
            "labels": proxy_labels,
            "annotations": {  # not the lock's keys: a proxy is never mistaken for a swap
                state.OWNER: opts.owner,
                state.PROXY_FOR_LABEL: name,
                state.HEARTBEAT: "0",  # the session's heartbeat, bumped by lease.Lease.beat
            },
            # restore deletes only a proxy that names the original's UID (and the garbage
            # collector removes it if the original is deleted)
            **({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": name, "uid": meta["uid"]}]}
               if meta.get("uid") else {}),
        },
        "spec": {
            "replicas": 1,
            "selector": selector,
            "template": template,
        },
    }
    return manifest


def scale_patch(replicas: int) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}}
