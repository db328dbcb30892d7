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
KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()
HOST_KEY = f"{KEY[0]} {KEY[1]}"


def with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as an API server returns it: defaults added, quantities rewritten."""
    out = copy.deepcopy(spec)
    out.update(restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default",
               tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}])
    for c in out["containers"]:
        c["terminationMessagePath"] = "/dev/termination-log"
        for p in c.get("ports") or []:
            p["protocol"] = "TCP"
        c.setdefault("volumeMounts", []).append(
            {"name": "kube-api-access-abcde", "mountPath": trust.SA_TOKEN_PATH,
             "readOnly": True})
    out["volumes"] = out.get("volumes", []) + [{"name": "kube-api-access-abcde",
                                                "projected": {"sources": []}}]
    for v in out["volumes"]:
        if "configMap" in v:
            v["configMap"]["defaultMode"] = 420
    return out


def genuine() -> tuple[dict[str, Any], dict[str, Any]]:
    rs = {"metadata": {"name": "hello-bridge-s1-abc", "uid": "rs-1", "ownerReferences": [
        {"kind": "Deployment", "name": "hello-bridge-s1", "uid": "proxy-1", "controller": True}]}}
    pod = {"metadata": {"name": "hello-bridge-s1-abc-xyz",
                        "labels": {**PLANNED["spec"]["template"]["metadata"]["labels"]},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "hello-bridge-s1-abc",
                                             "uid": "rs-1", "controller": True}]},
           "spec": with_defaults(SPEC)}
    return pod, rs


def test_the_proxy_deployments_pod_is_accepted() -> None:
    pod, rs = genuine()
    assert trust.pod_problems(pod, "proxy-1", rs, SPEC, "s1") == []


def test_a_bare_labelled_pod_is_refused() -> None:
    pod, _ = genuine()
    del pod["metadata"]["ownerReferences"]
    assert any("bare pod" in p for p in trust.pod_problems(pod, "proxy-1", None, SPEC, "s1"))


def test_a_pod_of_another_replicaset_or_deployment_is_refused() -> None:
    pod, rs = genuine()
    rs["metadata"]["ownerReferences"][0]["uid"] = "attackers-deployment"
    assert trust.pod_problems(pod, "proxy-1", rs, SPEC, "s1")
    pod, rs = genuine()
    rs["metadata"]["uid"] = "another-rs-with-that-name"
    assert trust.pod_problems(pod, "proxy-1", rs, SPEC, "s1")
    pod, _ = genuine()
    assert trust.pod_problems(pod, "proxy-1", None, SPEC, "s1")  # its ReplicaSet is gone


@pytest.mark.parametrize("tamper", [
    lambda s: s["containers"][0]["env"].append({"name": "BASH_ENV", "value": "/x"}),
    lambda s: s["containers"][0].update(image="evil:1"),
    lambda s: s["containers"][0].update(command=["sh", "-c", "evil"]),
    lambda s: s["containers"].append({"name": "spy", "image": "evil"}),
    lambda s: s["initContainers"].append({"name": "spy", "image": "evil"}),
    lambda s: s.update(ephemeralContainers=[{"name": "debug", "image": "evil"}]),
    lambda s: s.update(hostNetwork=True),
    lambda s: s["containers"][0]["volumeMounts"].append(
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
    assert trust.pod_problems(pod, "proxy-1", rs, SPEC, "s1")


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
