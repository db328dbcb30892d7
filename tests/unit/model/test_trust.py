"""What bridge accepts as its own (issue 13): proxy pods (item 1), the sidecar's host key
(item 4), proxy Deployments before a delete (item 2), and the proxy pod's hardening (item 5)."""

from __future__ import annotations

import copy
from typing import Any

import asyncssh
import pytest

from bridge.model import plan, trust
from bridge.model.target import PortMap
from sidecar import protocol
from tests.unit.support import ORIGINAL, options

PLANNED = plan.plan_proxy(ORIGINAL, options())
SPEC = PLANNED["spec"]["template"]["spec"]
META = PLANNED["spec"]["template"]["metadata"]
KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()
HOST_KEY = f"{KEY[0]} {KEY[1]}"


TOKEN_VOLUME = {"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}
TOKEN_MOUNT = {"name": "kube-api-access-abcde", "mountPath": trust.SA_TOKEN_PATH,
               "readOnly": True}


def with_defaults(spec: dict[str, Any], token: bool = False) -> dict[str, Any]:
    """The spec as the API server of Kubernetes v1.34 returns a pod made from it: defaults,
    admission (ServiceAccount, DefaultTolerationSeconds, Priority), the scheduler's node."""
    out = template_defaults(spec)
    out.update(serviceAccountName="default", serviceAccount="default",
               nodeName="node-1", priority=0, preemptionPolicy="PreemptLowerPriority",
               tolerations=[{"key": k, "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300} for k in trust.DEFAULT_TOLERATION_KEYS])
    if token:
        for c in out["containers"] + out.get("initContainers", []):
            c.setdefault("volumeMounts", []).append(dict(TOKEN_MOUNT))
        out["volumes"] = out.get("volumes", []) + [copy.deepcopy(TOKEN_VOLUME)]
    return out


def template_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """What the API server's defaulting adds to a pod template (and to a pod) spec."""
    out = copy.deepcopy(spec)
    out.update(restartPolicy="Always", dnsPolicy="ClusterFirst",
               schedulerName="default-scheduler", terminationGracePeriodSeconds=30,
               enableServiceLinks=True)
    out.setdefault("securityContext", {})
    for c in out["containers"] + out.get("initContainers", []):
        c["terminationMessagePath"] = "/dev/termination-log"
        c["terminationMessagePolicy"] = "File"
        c.setdefault("imagePullPolicy", "IfNotPresent")
        c.setdefault("resources", {})
        for p in c.get("ports") or []:
            p["protocol"] = "TCP"
        for probe in ("readinessProbe", "livenessProbe"):
            if "httpGet" in c.get(probe, {}):
                c[probe]["httpGet"]["scheme"] = "HTTP"
        for e in c.get("env") or []:
            if e.get("value") == "":
                del e["value"]  # the API server drops an empty value
    for v in out.get("volumes", []):
        if "configMap" in v:
            v["configMap"]["defaultMode"] = 420
    return out


def genuine() -> tuple[dict[str, Any], dict[str, Any]]:
    rs = {"metadata": {"name": "hello-bridge-s1-abc", "uid": "rs-1", "ownerReferences": [
        {"kind": "Deployment", "name": "hello-bridge-s1", "uid": "proxy-1", "controller": True}]}}
    pod = {"metadata": {"name": "hello-bridge-s1-abc-xyz",
                        "labels": {**META["labels"], "pod-template-hash": "abc"},
                        **({"annotations": dict(META["annotations"])}
                           if META.get("annotations") else {}),
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "hello-bridge-s1-abc",
                                             "uid": "rs-1", "controller": True}]},
           "spec": with_defaults(SPEC)}
    return pod, rs


def problems(pod: dict[str, Any], rs: dict[str, Any] | None, **kw: Any) -> list[str]:
    return trust.pod_problems(pod, "proxy-1", rs, kw.pop("spec", SPEC), "s1",
                              planned_meta=kw.pop("meta", META), **kw)


def test_the_proxy_deployments_pod_is_accepted() -> None:
    pod, rs = genuine()
    assert problems(pod, rs) == []


def test_a_bare_labelled_pod_is_refused() -> None:
    pod, _ = genuine()
    del pod["metadata"]["ownerReferences"]
    assert any("bare pod" in p for p in problems(pod, None))


def test_a_pod_of_another_replicaset_or_deployment_is_refused() -> None:
    pod, rs = genuine()
    rs["metadata"]["ownerReferences"][0]["uid"] = "attackers-deployment"
    assert problems(pod, rs)
    pod, rs = genuine()
    rs["metadata"]["uid"] = "another-rs-with-that-name"
    assert problems(pod, rs)
    pod, _ = genuine()
    assert problems(pod, None)  # its ReplicaSet is gone


@pytest.mark.parametrize("tamper", [
    lambda s: s["containers"][0]["env"].append({"name": "BASH_ENV", "value": "/x"}),
    lambda s: s["containers"][0].update(image="evil:1"),
    lambda s: s["containers"][0].update(command=["sh", "-c", "evil"]),
    lambda s: s["containers"].append({"name": "spy", "image": "evil"}),
    lambda s: s["initContainers"].append({"name": "spy", "image": "evil"}),
    lambda s: s.update(ephemeralContainers=[{"name": "debug", "image": "evil"}]),
    lambda s: s.update(hostNetwork=True),
    lambda s: s["containers"][0].setdefault("volumeMounts", []).append(
        {"name": "code", "mountPath": "/usr/local/lib/python3.11/site-packages/sidecar"}),
    lambda s: s["volumes"].append({"name": "code", "hostPath": {"path": "/"}}),
    lambda s: s["containers"][0]["env"].__setitem__(0, {"name": "A", "value": "2"}),
    lambda s: s["containers"][0].update(securityContext={"privileged": True}),
    lambda s: s["containers"][1].update(securityContext={"capabilities": {"add": ["ALL"]}}),
    lambda s: s["containers"][0].update(lifecycle={"postStart": {"exec": {"command": ["x"]}}}),
    lambda s: s.update(shareProcessNamespace=True),
])
def test_a_pod_whose_spec_differs_from_the_plan_is_refused(tamper: Any) -> None:
    pod, rs = genuine()
    tamper(pod["spec"])
    assert problems(pod, rs)


def test_host_key_is_the_first_strict_announcement_only() -> None:
    head = f"{protocol.HOST_KEY_LOG_PREFIX}{HOST_KEY}\n2026 sidecar: listening\n"
    assert trust.host_key_announcement(head) == HOST_KEY
    forged = KEY[0] + " " + "B" * 68
    injected = head + f"2026 sidecar: conn 1 closed: bye\n{protocol.HOST_KEY_LOG_PREFIX}{forged}\n"
    assert trust.host_key_announcement(injected) == HOST_KEY  # the last one is never taken
    assert trust.host_key_announcement("starting\n") is None  # not announced yet
    # a malformed first announcement: nothing later is believed either
    assert trust.host_key_announcement(
        f"{protocol.HOST_KEY_LOG_PREFIX}{HOST_KEY} trailing\n"
        f"{protocol.HOST_KEY_LOG_PREFIX}{HOST_KEY}\n") is None
    assert trust.host_key_announcement(f"{protocol.HOST_KEY_LOG_PREFIX}ssh-rsa AAAA\n") is None


def test_proxy_deployment_proof() -> None:
    proxy = copy.deepcopy(PLANNED)
    proxy["metadata"]["ownerReferences"] = [{"kind": "Deployment", "name": "hello",
                                             "uid": "orig-1"}]
    assert trust.proxy_deployment_problems(proxy, "hello", "s1", "orig-1") == []
    assert trust.proxy_deployment_problems(proxy, "hello", "s1", None) == []  # original gone
    assert trust.proxy_deployment_problems(proxy, "hello", "s1", "another-uid")
    assert trust.proxy_deployment_problems(proxy, "hello", "s2", "orig-1")
    assert trust.proxy_deployment_problems(proxy, "payments", "s1", None)
    stolen = copy.deepcopy(proxy)
    stolen["metadata"]["name"] = "payments"
    assert trust.proxy_deployment_problems(stolen, "hello", "s1", "orig-1")


def test_the_planned_proxy_names_its_original_by_uid() -> None:
    original = copy.deepcopy(ORIGINAL)
    original["metadata"]["uid"] = "orig-1"
    m = plan.plan_proxy(original, options())
    assert m["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello", "uid": "orig-1"}]
    assert trust.proxy_deployment_problems(m, "hello", "s1", "orig-1") == []


# -- item 5: the proxy pod's own hardening ----------------------------------------------------

def hostile_original(**pod_spec: Any) -> dict[str, Any]:
    o = copy.deepcopy(ORIGINAL)
    app = o["spec"]["template"]["spec"]["containers"][0]
    app["securityContext"] = {"privileged": False, "runAsUser": 0,
                              "capabilities": {"add": ["NET_ADMIN", "SYS_PTRACE"]},
                              "allowPrivilegeEscalation": True}
    app["ports"] = [{"name": "http", "containerPort": 8080, "hostPort": 8080, "hostIP": "0.0.0.0"}]
    o["spec"]["template"]["spec"].update(pod_spec)
    return o


def test_the_sidecar_gets_its_own_restricted_security_context() -> None:
    m = plan.plan_proxy(hostile_original(), options())
    pod = m["spec"]["template"]["spec"]
    sidecar = pod["containers"][0]
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sidecar["ports"] == [{"name": "http", "containerPort": 8080}]  # no hostPort
    assert pod["automountServiceAccountToken"] is False


def test_the_token_is_mounted_only_when_asked_for() -> None:
    import dataclasses

    opts = dataclasses.replace(options(), service_account_token=True)
    pod = plan.plan_proxy(ORIGINAL, opts)["spec"]["template"]["spec"]
    assert "automountServiceAccountToken" not in pod


def test_low_ports_still_bind_as_non_root() -> None:
    m = plan.plan_proxy(hostile_original(), options(PortMap(80, 8080, "http")))
    pod = m["spec"]["template"]["spec"]
    assert {"name": plan.UNPRIVILEGED_PORT_SYSCTL, "value": "0"} in \
        pod["securityContext"]["sysctls"]
    assert pod["containers"][0]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("pod_spec", [{"hostNetwork": True}, {"hostPID": True},
                                      {"hostIPC": True}])
def test_templates_reaching_the_node_are_refused_unless_allowed(pod_spec: Any) -> None:
    import dataclasses

    with pytest.raises(plan.UnsafeTemplate, match="--allow-host-access"):
        plan.plan_proxy(hostile_original(**pod_spec), options())
    allowed = dataclasses.replace(options(), allow_host_access=True)
    assert plan.plan_proxy(hostile_original(**pod_spec), allowed)


def test_a_privileged_container_in_the_template_is_refused() -> None:
    o = copy.deepcopy(ORIGINAL)
    o["spec"]["template"]["spec"]["containers"][1]["securityContext"] = {"privileged": True}
    with pytest.raises(plan.UnsafeTemplate, match="logger is privileged"):
        plan.plan_proxy(o, options())


def test_unsafe_template_message_is_one_line_naming_why() -> None:
    with pytest.raises(plan.UnsafeTemplate) as e:
        plan.plan_proxy(hostile_original(hostNetwork=True), options())
    assert "\n" not in str(e.value) and "hostNetwork" in str(e.value)


# -- issue 19 item 1: a neighbour's copy of the proxy pod -------------------------------------

def test_a_forged_owner_reference_with_an_init_container_of_its_own_is_refused() -> None:
    """The attack of issue 19: the proxy pod's spec copied, an init container added, and a
    controller reference naming the proxy's ReplicaSet (name and UID copied). The ownership
    chain checks out; the spec does not."""
    pod, rs = genuine()
    pod["metadata"]["name"] = "mallory"
    pod["spec"]["initContainers"].append({"name": "mallory", "image": "busybox",
                                          "command": ["sh", "-c", "steal"]})
    found = problems(pod, rs)
    assert any("mallory" in p and "initContainers" in p for p in found)
    assert not any("ReplicaSet" in p for p in found)  # the chain alone would have let it in


@pytest.mark.parametrize("label_or_annotation", [
    ("annotations", "controller.kubernetes.io/pod-deletion-cost", "1000"),
    ("annotations", "container.apparmor.security.beta.kubernetes.io/app", "unconfined"),
    ("labels", "role", "admin-api"),  # another Service would select it
])
def test_metadata_the_plan_lacks_is_refused(label_or_annotation: Any) -> None:
    kind, key, value = label_or_annotation
    pod, rs = genuine()
    pod["metadata"].setdefault(kind, {})[key] = value
    assert any(key in p for p in problems(pod, rs))
    pod, rs = genuine()
    pod["metadata"]["labels"]["tier"] = "db"  # a planned label changed
    assert any("tier" in p for p in problems(pod, rs))


def test_what_the_api_server_fills_in_is_accepted() -> None:
    """nodeName (bound by the scheduler, or written by the creator: not provable), the
    ServiceAccount, priority, the default tolerations and, when automount is on, the token."""
    spec = copy.deepcopy(SPEC)
    del spec["automountServiceAccountToken"]
    pod, rs = genuine()
    pod["spec"] = with_defaults(spec, token=True)
    assert problems(pod, rs, spec=spec) == []
    # with automount off (the default plan) the token volume is itself an addition
    pod["spec"]["automountServiceAccountToken"] = False
    assert any("kube-api-access" in p for p in problems(pod, rs))


@pytest.mark.parametrize("tamper", [
    # a token volume with more sources than ServiceAccount admission writes
    lambda s: s["volumes"][-1]["projected"]["sources"].append(
        {"secret": {"name": "someone-elses"}}),
    lambda s: s["containers"][0]["volumeMounts"][-1].update(readOnly=False),
    lambda s: s["containers"][0]["volumeMounts"][-1].update(mountPath="/usr/lib"),
])
def test_a_token_volume_not_as_admission_writes_it_is_refused(tamper: Any) -> None:
    spec = copy.deepcopy(SPEC)
    del spec["automountServiceAccountToken"]
    pod, rs = genuine()
    pod["spec"] = with_defaults(spec, token=True)
    tamper(pod["spec"])
    assert problems(pod, rs, spec=spec)


# -- issue 19 item 2: the whole spec ------------------------------------------------------------

def _sidecar(s: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in s["containers"] if c["name"] == "app")


@pytest.mark.parametrize("tamper", [
    lambda s: s["initContainers"].append({"name": "spy", "image": "evil", "restartPolicy":
                                          "Always"}),  # a native sidecar
    lambda s: s["initContainers"][0].update(securityContext={"privileged": True}),
    lambda s: s["initContainers"][0].update(command=["sh", "-c", "evil"]),
    lambda s: _sidecar(s)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
    lambda s: _sidecar(s)["securityContext"].pop("allowPrivilegeEscalation"),
    lambda s: _sidecar(s)["securityContext"].update(runAsUser=0),
    lambda s: _sidecar(s)["env"].__setitem__(
        0, {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    lambda s: _sidecar(s)["env"].append({"name": protocol.ENV_BIND, "value": "0.0.0.0"}),
    lambda s: _sidecar(s).update(envFrom=[{"secretRef": {"name": "x"}}]),
    lambda s: _sidecar(s).update(stdin=True, tty=True),
    lambda s: _sidecar(s).update(workingDir="/tmp"),
    lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.shm_rmid_forced",
                                                    "value": "1"}]),
    lambda s: s["securityContext"].update(runAsUser=0),
    lambda s: s["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
    lambda s: s["volumes"][0].update(configMap={"name": "someone-elses", "defaultMode": 420}),
    lambda s: s.update(hostPID=True),
    lambda s: s.update(hostIPC=True),
    lambda s: s.update(runtimeClassName="kata"),
    lambda s: s.update(serviceAccountName="admin", serviceAccount="admin"),
    lambda s: s.update(dnsPolicy="None", dnsConfig={"nameservers": ["10.9.9.9"]}),
    lambda s: s.update(hostAliases=[{"ip": "10.9.9.9", "hostnames": ["db"]}]),
    lambda s: s.update(automountServiceAccountToken=True),
    lambda s: s.update(resourceClaims=[{"name": "gpu", "resourceClaimName": "gpu"}]),
    lambda s: s["tolerations"].append({"key": "dedicated", "operator": "Exists"}),
    lambda s: s.update(schedulerName="their-scheduler"),
])
def test_any_field_beyond_the_plan_and_the_defaults_is_refused(tamper: Any) -> None:
    pod, rs = genuine()
    tamper(pod["spec"])
    assert problems(pod, rs), "accepted a pod whose spec is not the plan"


def test_messages_about_a_refused_pod_are_escaped() -> None:
    pod, rs = genuine()
    pod["spec"]["containers"].append({"name": "x\x1b]52;c;ZWNobyBwd25lZA==\x07", "image": "e"})
    pod["metadata"]["annotations"] = {"\x1b[2Jcost\u202e": "1"}
    found = problems(pod, rs)
    assert found and not any("\x1b" in p or "\x07" in p or "\u202e" in p for p in found)


# -- meshes: what admission added to the original's own pods ----------------------------------

READ_ORIGINAL = copy.deepcopy(ORIGINAL)  # the original as the API server returns it
READ_ORIGINAL["spec"]["template"]["spec"] = template_defaults(
    READ_ORIGINAL["spec"]["template"]["spec"])
MESHED_PLAN = plan.plan_proxy(READ_ORIGINAL, options())
MESHED_SPEC = MESHED_PLAN["spec"]["template"]["spec"]
MESHED_META = MESHED_PLAN["spec"]["template"]["metadata"]


def inject(spec: dict[str, Any], meta: dict[str, Any], workload: str, *,
           native: bool = False) -> None:
    """What an Istio-like injector adds to every pod of a namespace (shape learnt from
    Istio's injection template): an init container that sets up iptables with NET_ADMIN, a
    proxy container (or a native sidecar: an init container with restartPolicy Always) whose
    variables name the workload, volumes, labels and annotations."""
    init = {"name": "mesh-init", "image": "mesh/proxyv2:1.0", "args": ["iptables", "-p", "15001"],
            "imagePullPolicy": "IfNotPresent", "resources": {},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"],
                                                 "drop": ["ALL"]}, "runAsUser": 0}}
    proxy = {"name": "mesh-proxy", "image": "mesh/proxyv2:1.0",
             "args": ["proxy", "sidecar", "--serviceCluster", f"{workload}.shop"],
             "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {
                 "apiVersion": "v1", "fieldPath": "metadata.name"}}},
                     {"name": "MESH_WORKLOAD_NAME", "value": workload},
                     {"name": "MESH_OWNER",
                      "value": f"kubernetes://apis/apps/v1/namespaces/shop/deployments/{workload}"}],
             "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
             "volumeMounts": [{"name": "mesh-envoy", "mountPath": "/etc/mesh/proxy"},
                              {"name": "mesh-token", "mountPath": "/var/run/secrets/tokens"}],
             "imagePullPolicy": "IfNotPresent", "resources": {},
             "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
             "securityContext": {"runAsUser": 1337, "runAsNonRoot": True,
                                 "capabilities": {"drop": ["ALL"]}}}
    if native:
        proxy["restartPolicy"] = "Always"
        spec["initContainers"] = [init, proxy] + spec.get("initContainers", [])
    else:
        spec["initContainers"] = [init] + spec.get("initContainers", [])
        spec["containers"] = spec["containers"] + [proxy]
    spec["volumes"] = spec.get("volumes", []) + [
        {"name": "mesh-envoy", "emptyDir": {"medium": "Memory"}},
        {"name": "mesh-token", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"audience": "mesh-ca", "expirationSeconds": 43200,
                                     "path": "mesh-token"}}]}}]
    meta.setdefault("labels", {}).update({"security.mesh.io/tlsMode": "mesh",
                                          "service.mesh.io/canonical-name": workload})
    meta.setdefault("annotations", {}).update({"sidecar.mesh.io/status": '{"v":1}',
                                               "kubectl.kubernetes.io/default-container": "app"})


def original_pod(i: int = 0, native: bool = False) -> dict[str, Any]:
    template = READ_ORIGINAL["spec"]["template"]
    meta = copy.deepcopy(template["metadata"])
    meta["labels"]["pod-template-hash"] = "7f9"
    meta["name"] = f"hello-7f9-{i}"
    spec = with_defaults(template["spec"], token=True)
    for c in spec["containers"] + spec["initContainers"]:  # each pod its own token volume
        for m in c.get("volumeMounts", []):
            if m["name"].startswith("kube-api-access-"):
                m["name"] = f"kube-api-access-{i}"
    spec["volumes"][-1]["name"] = f"kube-api-access-{i}"
    inject(spec, meta, "hello", native=native)
    return {"metadata": meta, "spec": spec}


def meshed_proxy_pod(native: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    pod, rs = genuine()
    meta = pod["metadata"]
    meta["labels"] = {**MESHED_META["labels"], "pod-template-hash": "abc"}
    meta.pop("annotations", None)
    pod["spec"] = with_defaults(MESHED_SPEC)
    inject(pod["spec"], meta, "hello-bridge-s1", native=native)
    return pod, rs


def meshed_problems(pod: dict[str, Any], rs: dict[str, Any], admitted: trust.Admitted) -> list[str]:
    return problems(pod, rs, spec=MESHED_SPEC, meta=MESHED_META, admitted=admitted,
                    proxy="hello-bridge-s1")


@pytest.mark.parametrize("native", [False, True])
def test_a_meshed_proxy_pod_is_accepted_when_the_originals_pods_carry_the_same(
        native: bool) -> None:
    pod, rs = meshed_proxy_pod(native)
    assert meshed_problems(pod, rs, trust.NOTHING_ADMITTED)  # what issue 19 saw: refused
    admitted, why = trust.admitted(READ_ORIGINAL, [original_pod(i, native) for i in range(3)])
    assert why == ""
    assert "mesh-proxy" in admitted.summary() and "mesh-envoy" in admitted.summary()
    assert meshed_problems(pod, rs, admitted) == []


@pytest.mark.parametrize("tamper", [
    lambda p: p["spec"]["containers"].append({"name": "spy", "image": "evil"}),
    lambda p: p["spec"]["containers"][-1].update(image="evil/proxyv2:1.0"),
    lambda p: p["spec"]["containers"][-1].update(command=["sh", "-c", "evil"]),
    lambda p: p["spec"]["containers"][-1]["args"].append("--evil"),
    lambda p: p["spec"]["containers"][-1]["env"].append({"name": "LD_PRELOAD", "value": "/x"}),
    lambda p: p["spec"]["containers"][-1]["securityContext"].update(privileged=True),
    lambda p: p["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"].append(
        "SYS_ADMIN"),
    lambda p: p["spec"]["containers"][-1]["volumeMounts"].append(
        {"name": "mesh-envoy", "mountPath": "/usr/local/lib/python3.11/site-packages"}),
    lambda p: p["spec"]["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
    lambda p: p["spec"]["volumes"][-1]["projected"]["sources"][0]["serviceAccountToken"]
    .update(audience="someone-else"),
    lambda p: p["metadata"]["annotations"].update(
        {"controller.kubernetes.io/pod-deletion-cost": "9"}),
    lambda p: p["spec"]["initContainers"].reverse(),  # the mesh's init container runs last
])
def test_under_a_mesh_anything_beyond_the_originals_additions_is_refused(tamper: Any) -> None:
    admitted, _ = trust.admitted(READ_ORIGINAL, [original_pod(i) for i in range(2)])
    pod, rs = meshed_proxy_pod()
    tamper(pod)
    assert meshed_problems(pod, rs, admitted)


def test_a_forged_pod_of_the_original_cannot_widen_what_is_admitted() -> None:
    """A neighbour's pod that copies the original's and claims its ReplicaSet, with a
    container of theirs: the additions must be on every live pod, so nothing is admitted
    (the swap refuses the mesh's pod, saying why) rather than their container."""
    forged = original_pod(9)
    forged["spec"]["containers"].append({"name": "spy", "image": "evil"})
    admitted, why = trust.admitted(READ_ORIGINAL, [original_pod(0), forged, original_pod(1)])
    assert admitted == trust.NOTHING_ADMITTED and "differ" in why
    assert trust.admitted(READ_ORIGINAL, [])[0] == trust.NOTHING_ADMITTED


def test_without_a_mesh_nothing_is_admitted() -> None:
    pod = original_pod()
    template = READ_ORIGINAL["spec"]["template"]
    pod["spec"] = with_defaults(template["spec"], token=True)
    pod["metadata"] = {**copy.deepcopy(template["metadata"]), "name": "hello-1"}
    pod["metadata"]["labels"]["pod-template-hash"] = "7f9"
    admitted, why = trust.admitted(READ_ORIGINAL, [pod])
    assert why == "" and admitted.summary() == "" and not admitted.labels
    assert not admitted.annotations and not admitted.pod_fields and not admitted.fields


def test_a_proxy_deployments_problems_are_escaped() -> None:
    """`bridge restore --all` prints them, and the original's name in them is read from the
    orphan's own annotation (issue 19 item 5)."""
    proxy = copy.deepcopy(PLANNED)
    hostile = "hello\x1b]52;c;ZXZpbA==\x07\u202e"
    found = trust.proxy_deployment_problems(proxy, hostile, "s1", "orig-1")
    assert found and not any(c in p for p in found for c in "\x1b\x07\u202e")


def test_a_namespaces_default_tolerations_and_a_runtime_class_overhead() -> None:
    """PodTolerationRestriction adds a namespace's tolerations to every pod (accepted when the
    original's pods carry them); RuntimeClass admission adds the planned class's overhead."""
    extra = {"key": "dedicated", "operator": "Equal", "value": "shop", "effect": "NoSchedule"}
    originals = [original_pod(i) for i in range(2)]
    for p in originals:
        p["spec"]["tolerations"].append(dict(extra))
    admitted, _ = trust.admitted(READ_ORIGINAL, originals)
    pod, rs = meshed_proxy_pod()
    pod["spec"]["tolerations"].append(dict(extra))
    assert meshed_problems(pod, rs, admitted) == []
    plain, _ = trust.admitted(READ_ORIGINAL, [original_pod(i) for i in range(2)])
    assert any("dedicated" in p for p in meshed_problems(pod, rs, plain))  # theirs lack it
    spec = {**copy.deepcopy(SPEC), "runtimeClassName": "gvisor"}
    pod, rs = genuine()
    pod["spec"] = {**with_defaults(spec), "overhead": {"cpu": "250m"}}
    assert problems(pod, rs, spec=spec) == []
    pod["spec"] = {**with_defaults(SPEC), "overhead": {"cpu": "250m"}}
    assert problems(pod, rs)  # without a planned runtime class, nothing adds an overhead
