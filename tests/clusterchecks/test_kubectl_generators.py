"""kubectl's typed commands send protobuf bodies (kubectl create namespace|configmap|secret|
deployment|service, run, expose); the objects they create read back as Kubernetes stores them."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

pytestmark = pytest.mark.cluster


def _get(kubectl: Any, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json"))


def test_create_generators(kubectl: Any, namespace: str, wait_until: Any) -> None:
    ns = ("-n", namespace)
    kubectl("create", "deployment", "web", "--image=example/web:1", "--port=8080",
            "--replicas=0", *ns, "--", "python3", "-m", "http.server", "8080")
    d = _get(kubectl, "deployment", "web", *ns)
    assert d["spec"]["replicas"] == 0  # an explicit zero survives
    assert d["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python3", "-m", "http.server", "8080"]
    assert c["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert c["image"] == "example/web:1" and "workingDir" not in c

    kubectl("expose", "deployment", "web", "--port=80", "--target-port=8080", *ns)
    svc = _get(kubectl, "service", "web", *ns)
    assert svc["spec"]["selector"] == {"app": "web"}
    assert svc["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 8080}]
    assert svc["spec"]["clusterIP"].startswith("10.96.")

    kubectl("create", "configmap", "cfg", "--from-literal=a=b", *ns)
    assert _get(kubectl, "configmap", "cfg", *ns)["data"] == {"a": "b"}
    kubectl("create", "secret", "generic", "sec", "--from-literal=password=hunter2", *ns)
    secret = _get(kubectl, "secret", "sec", *ns)
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["password"]) == b"hunter2"

    kubectl("run", "solo", "--image=example/solo:1", "--restart=Never", "--labels=tier=x",
            "--env=GREETING=hi", "--command", *ns, "--", "python3", "-c", "print(1)")
    pod = _get(kubectl, "pod", "solo", *ns)
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"] == {"tier": "x"}
    assert pod["spec"]["containers"][0]["env"] == [{"name": "GREETING", "value": "hi"}]
    assert pod["spec"]["containers"][0]["command"] == ["python3", "-c", "print(1)"]
    wait_until(lambda: _get(kubectl, "pod", "solo", *ns)["status"].get("phase") == "Succeeded",
               30, "the pod to complete")


def test_create_namespace(kubectl: Any) -> None:
    import uuid
    name = f"gen-{uuid.uuid4().hex[:8]}"
    assert f"namespace/{name} created" in kubectl("create", "namespace", name)
    try:
        got = _get(kubectl, "namespace", name)
        assert got["status"]["phase"] == "Active"
        assert got["metadata"]["labels"]["kubernetes.io/metadata.name"] == name
    finally:
        kubectl("delete", "namespace", name, timeout=90)
