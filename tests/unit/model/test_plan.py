"""The proxy Deployment planned from the original: a faithful copy running the sidecar."""

from __future__ import annotations

import copy
from typing import Any

from bridge.model import plan, state
from bridge.model.target import PortMap
from sidecar import protocol
from tests.unit.support import ORIGINAL, options


def test_original_is_not_modified() -> None:
    before = copy.deepcopy(ORIGINAL)
    plan.plan_proxy(ORIGINAL, options())
    assert ORIGINAL == before


def test_proxy_metadata_and_selector() -> None:
    m = plan.plan_proxy(ORIGINAL, options())
    assert m["metadata"]["name"] == "hello-bridge-s1"
    assert m["metadata"]["namespace"] == "shop"
    assert m["metadata"]["labels"][state.PROXY_FOR_LABEL] == "hello"
    assert m["metadata"]["labels"][state.MANAGED_BY_LABEL] == "bridge"
    assert "resourceVersion" not in m["metadata"]
    assert state.decode(m["metadata"]["annotations"]) is None  # never taken for a locked original
    assert m["spec"]["replicas"] == 1
    assert m["spec"]["selector"] == {"matchLabels": {"app": "hello", state.SESSION_LABEL: "s1"}}
    # the Service selects on the original labels: the proxy pods carry them all
    assert m["spec"]["template"]["metadata"]["labels"] == {
        "app": "hello", "tier": "web", state.SESSION_LABEL: "s1"}


def test_pod_template_kept_except_the_swapped_container() -> None:
    m = plan.plan_proxy(ORIGINAL, options())
    pod = m["spec"]["template"]["spec"]
    orig = ORIGINAL["spec"]["template"]["spec"]
    assert pod["initContainers"] == orig["initContainers"]
    assert pod["volumes"] == orig["volumes"]
    assert pod["containers"][1] == orig["containers"][1]  # other containers untouched
    assert "securityContext" not in pod  # no port below 1024


def test_sidecar_container() -> None:
    c = plan.plan_proxy(ORIGINAL, options())["spec"]["template"]["spec"]["containers"][0]
    o = ORIGINAL["spec"]["template"]["spec"]["containers"][0]
    assert c["name"] == "app"
    assert c["image"] == "sidecar:test"
    for removed in ("command", "args", "workingDir", "livenessProbe", "startupProbe",
                    "lifecycle"):
        assert removed not in c
    assert c["readinessProbe"]["httpGet"] == {"path": protocol.READY_PATH,
                                             "port": protocol.DEFAULT_HEALTH_PORT}
    assert c["readinessProbe"]["periodSeconds"] == 1
    assert c["envFrom"] == o["envFrom"]
    assert "volumeMounts" not in c  # no files asked for: the sidecar mounts nothing (issue 15)
    assert c["ports"] == o["ports"]
    env = {e["name"]: e for e in c["env"]}
    assert env["A"] == {"name": "A", "value": "1"}
    assert env["S"] == o["env"][1]
    assert env[protocol.ENV_AUTHORIZED_KEY]["value"] == "ssh-ed25519 AAAA bridge"
    assert env[protocol.ENV_PORTS]["value"] == "8080"


def test_low_port_gets_the_unprivileged_port_sysctl() -> None:
    m = plan.plan_proxy(ORIGINAL, options(PortMap(80, 8081), PortMap(8080, 8080)))
    pod = m["spec"]["template"]["spec"]
    assert pod["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    assert env[protocol.ENV_PORTS] == "80,8080"


def test_existing_sysctls_kept() -> None:
    orig = copy.deepcopy(ORIGINAL)
    orig["spec"]["template"]["spec"]["securityContext"] = {
        "runAsUser": 1000, "sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}]}
    pod = plan.plan_proxy(orig, options(PortMap(443, 8443)))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000
    assert {s["name"] for s in pod["securityContext"]["sysctls"]} == {
        "kernel.shm_rmid_forced", "net.ipv4.ip_unprivileged_port_start"}


def test_proxy_name_stays_a_valid_name() -> None:
    long = "x" * 63
    n = plan.proxy_name(long, "abcd1234")
    assert len(n) <= 63 and n.endswith("-bridge-abcd1234")
    assert plan.proxy_name(long, "abcd1234") != plan.proxy_name("y" * 63, "abcd1234")


def _sidecar_of(m: dict[str, Any]) -> dict[str, Any]:
    return m["spec"]["template"]["spec"]["containers"][0]


def _env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c["env"]}


def test_sidecar_control_ports_default_to_the_protocol_ones() -> None:
    m = plan.plan_proxy(ORIGINAL, options())
    env = _env_of(_sidecar_of(m))
    assert env[protocol.ENV_SSH_PORT] == str(protocol.DEFAULT_SSH_PORT)
    assert env[protocol.ENV_HEALTH_PORT] == str(protocol.DEFAULT_HEALTH_PORT)
    assert plan.ssh_port_of(m, "app") == protocol.DEFAULT_SSH_PORT


def test_sidecar_control_ports_avoid_every_port_the_pod_declares() -> None:
    """All containers share the pod's network namespace: the sidecar must not take a port the
    app forwards or another container listens on."""
    original = copy.deepcopy(ORIGINAL)
    containers = original["spec"]["template"]["spec"]["containers"]
    containers[0]["ports"] = [{"containerPort": 8022}]  # the app itself uses the SSH default
    containers[1]["ports"] = [{"containerPort": 18023}]  # another container, next candidate
    m = plan.plan_proxy(original, options(PortMap(8022, 8022, None)))
    c = _sidecar_of(m)
    env = _env_of(c)
    ssh, health = int(env[protocol.ENV_SSH_PORT]), int(env[protocol.ENV_HEALTH_PORT])
    assert {ssh, health}.isdisjoint({8022, 18023})
    assert ssh != health
    assert c["readinessProbe"]["httpGet"]["port"] == health
    assert plan.ssh_port_of(m, "app") == ssh
    assert env[protocol.ENV_PORTS] == "8022"


def test_every_sidecar_setting_is_set_by_the_plan_not_by_the_apps_env() -> None:
    """The proxy container inherits the app's env: an app variable named like a setting must
    not configure the sidecar (BRIDGE_BIND=0.0.0.0 would expose SSH on the pod IP)."""
    original = copy.deepcopy(ORIGINAL)
    app = original["spec"]["template"]["spec"]["containers"][0]
    app["env"] += [{"name": protocol.ENV_BIND, "value": "0.0.0.0"},
                   {"name": protocol.ENV_KEEPALIVE_SECONDS, "value": "soon"},
                   {"name": protocol.ENV_DRAIN_SECONDS, "value": "never"}]
    env = _sidecar_of(plan.plan_proxy(original, options()))["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))  # one value each: ours
    values = {e["name"]: e["value"] for e in env if "value" in e}
    assert values[protocol.ENV_BIND] == protocol.DEFAULT_BIND
    assert float(values[protocol.ENV_KEEPALIVE_SECONDS]) == protocol.DEFAULT_KEEPALIVE_SECONDS
    assert float(values[protocol.ENV_DRAIN_SECONDS]) == protocol.DEFAULT_DRAIN_SECONDS


def test_a_long_deployment_name_gives_valid_label_values() -> None:
    original = copy.deepcopy(ORIGINAL)
    long_name = "a-really-long-deployment-name-" + "x" * 60
    original["metadata"]["name"] = long_name
    m = plan.plan_proxy(original, options())
    for value in m["metadata"]["labels"].values():
        assert len(value) <= 63 and value[-1].isalnum()
    assert len(m["metadata"]["name"]) <= 63
    assert m["metadata"]["annotations"][state.PROXY_FOR_LABEL] == long_name


def test_the_sidecar_runs_without_the_apps_loader_and_python_variables() -> None:
    """Issue 19, item 3: after the app's env (and envFrom, which the kubelet applies first),
    each shielded name's value is copied under the prefix and the name blanked; the app's own
    entries stay as they are, in order, so `$(NAME)` references keep their meaning."""
    original = copy.deepcopy(ORIGINAL)
    app = original["spec"]["template"]["spec"]["containers"][0]
    app["env"] += [{"name": "LD_PRELOAD", "value": "/evil.so"},
                   {"name": "PYTHONPATH", "value": "/evil"},
                   {"name": protocol.SHIELD_PREFIX + "PATH", "value": "forged"}]
    env = _sidecar_of(plan.plan_proxy(original, options()))["env"]
    names = [e["name"] for e in env]
    assert env[:4] == app["env"][:4]  # A, S, LD_PRELOAD, PYTHONPATH: untouched, first
    assert names.count(protocol.SHIELD_PREFIX + "PATH") == 1  # the app's forged copy is gone
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONHOME",
                 "PYTHONWARNINGS", "OPENSSL_CONF", "GCONV_PATH", "GLIBC_TUNABLES", "PATH"):
        copy_at = names.index(protocol.SHIELD_PREFIX + name)
        assert env[copy_at]["value"] == f"$({name})"
        last = len(names) - 1 - names[::-1].index(name)
        assert last == copy_at + 1  # blanked right after its value was taken
        assert env[last].get("value", "") == (plan.SIDECAR_PATH if name == "PATH" else "")
    assert names[-1] == protocol.ENV_MOUNTS  # the settings still come last
