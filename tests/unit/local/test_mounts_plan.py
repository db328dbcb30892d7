"""The proxy pod's side of the pod's files (bridge/model/plan.py): which volume mounts the sidecar
gets and serves. Pure: manifests in, manifests out."""

from __future__ import annotations

import copy
import json
from typing import Any

from bridge.model import plan
from bridge.model.target import PortMap
from sidecar import files as sidecar_files
from sidecar import protocol

POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "initContainers": [{"name": "prepare", "image": "busybox",
                                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                "volumes": [
                    {"name": "config", "configMap": {"name": "web-config"}},
                    {"name": "tls", "secret": {"secretName": "web-tls"}},
                    {"name": "work", "emptyDir": {}},
                    {"name": "node-logs", "hostPath": {"path": "/var/log"}},
                    {"name": "repo", "gitRepo": {"repository": "https://example.com/r.git"}},
                    {"name": "token", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token"}}]}},
                ],
                "containers": [{
                    "name": "app", "image": "web:1",
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/config"},
                        {"name": "tls", "mountPath": "/etc/tls", "readOnly": True},
                        {"name": "work", "mountPath": "/work/",
                         "mountPropagation": "HostToContainer"},
                        {"name": "config", "mountPath": "/etc/app.yaml", "subPath": "app.yaml"},
                        {"name": "node-logs", "mountPath": "/host/logs"},
                        {"name": "repo", "mountPath": "/repo"},
                        {"name": "token", "mountPath": "/var/run/secrets/tokens"},
                    ],
                    "volumeDevices": [{"name": "raw", "devicePath": "/dev/xvda"}],
                }],
            },
        },
    },
}


def opts(files: bool, writable: bool = False) -> plan.Options:
    return plan.Options(container="app", ports=(PortMap(8080, 8080, "http"),), session="s1",
                        owner="ann@laptop", authorized_key="ssh-ed25519 AAAA bridge",
                        files=files, files_writable=writable)


def sidecar_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def served(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    env = {e["name"]: e.get("value") for e in sidecar_of(manifest)["env"]}
    raw = env[protocol.ENV_MOUNTS]
    return json.loads(raw) if raw else []


def test_files_keep_the_pods_volumes_and_mount_them_read_only_in_the_sidecar() -> None:
    m = plan.plan_proxy(POD, opts(files=True))
    pod = m["spec"]["template"]["spec"]
    assert pod["volumes"] == POD["spec"]["template"]["spec"]["volumes"]  # all kept
    assert pod["initContainers"] == POD["spec"]["template"]["spec"]["initContainers"]
    c = sidecar_of(m)
    assert c["volumeMounts"] == [
        {"name": "config", "mountPath": "/etc/config", "readOnly": True},
        {"name": "tls", "mountPath": "/etc/tls", "readOnly": True},
        {"name": "work", "mountPath": "/work/", "readOnly": True},
        {"name": "config", "mountPath": "/etc/app.yaml", "readOnly": True,
         "subPath": "app.yaml"},
        {"name": "token", "mountPath": "/var/run/secrets/tokens", "readOnly": True},
    ]
    assert "volumeDevices" not in c
    assert "automountServiceAccountToken" not in pod
    assert served(m) == [
        {"path": "/etc/config", "writable": False},
        {"path": "/etc/tls", "writable": False},
        {"path": "/work", "writable": False},
        {"path": "/etc/app.yaml", "writable": False},
        {"path": "/var/run/secrets/tokens", "writable": False},
        {"path": plan.SERVICE_ACCOUNT_DIR, "writable": False},
    ]
    # the sidecar accepts exactly what the plan produces
    raw = next(e["value"] for e in c["env"] if e["name"] == protocol.ENV_MOUNTS)
    assert [mt.path for mt in sidecar_files.parse_mounts(raw)][0] == "/etc/config"


def test_node_level_volumes_are_never_mounted_into_the_sidecar() -> None:
    m = plan.plan_proxy(POD, opts(files=True, writable=True))
    paths = [vm["mountPath"] for vm in sidecar_of(m)["volumeMounts"]]
    assert "/host/logs" not in paths and "/repo" not in paths
    assert all(s["path"] not in ("/host/logs", "/repo") for s in served(m))
    skipped = plan.files_plan(POD["spec"]["template"]["spec"],
                              POD["spec"]["template"]["spec"]["containers"][0],
                              opts(files=True)).skipped
    assert any("/host/logs" in s and "hostPath" in s for s in skipped)
    assert any("/repo" in s and "gitRepo" in s for s in skipped)


def test_mount_rw_makes_only_writable_mounts_writable() -> None:
    m = plan.plan_proxy(POD, opts(files=True, writable=True))
    ro = {vm["mountPath"]: vm["readOnly"] for vm in sidecar_of(m)["volumeMounts"]}
    assert ro["/work/"] is False and ro["/etc/config"] is False
    assert ro["/etc/tls"] is True  # readOnly in the pod stays read-only
    w = {s["path"]: s["writable"] for s in served(m)}
    assert w["/work"] is True and w["/etc/tls"] is False
    assert w[plan.SERVICE_ACCOUNT_DIR] is False


def test_without_files_the_sidecar_mounts_and_serves_nothing() -> None:
    m = plan.plan_proxy(POD, opts(files=False))
    c = sidecar_of(m)
    assert "volumeMounts" not in c and "volumeDevices" not in c
    assert served(m) == []
    # no files asked: no API credentials in the proxy pod (issue 13), init containers or not
    assert m["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    alone = copy.deepcopy(POD)
    del alone["spec"]["template"]["spec"]["initContainers"]
    m = plan.plan_proxy(alone, opts(files=False))
    assert m["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # files asked: the token is one of them
    assert "automountServiceAccountToken" not in plan.plan_proxy(POD, opts(files=True))[
        "spec"]["template"]["spec"]


def test_no_service_account_token_when_the_pod_turns_it_off() -> None:
    off = copy.deepcopy(POD)
    off["spec"]["template"]["spec"]["automountServiceAccountToken"] = False
    m = plan.plan_proxy(off, opts(files=True))
    assert plan.SERVICE_ACCOUNT_DIR not in [s["path"] for s in served(m)]


def test_an_apps_own_bridge_mounts_variable_never_configures_the_sidecar() -> None:
    sneaky = copy.deepcopy(POD)
    sneaky["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": protocol.ENV_MOUNTS, "value": json.dumps([{"path": "/etc"}])}]
    for files in (False, True):
        env = sidecar_of(plan.plan_proxy(sneaky, opts(files=files)))["env"]
        mine = [e for e in env if e["name"] == protocol.ENV_MOUNTS]
        assert len(mine) == 1
        assert "/etc\"" not in mine[0]["value"]
