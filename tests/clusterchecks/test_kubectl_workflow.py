"""Point 2 (and 1, 3, 4): the real kubectl - get, create -f, apply, scale, wait, logs, delete,
patch - against the test cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 1
  selector:
    matchLabels: {app: hello}
  template:
    metadata:
      labels: {app: hello}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: example/hello:1
        command: [python3, -u, -c, "import time; print('hello from the pod'); time.sleep(600)"]
---
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_create_get_scale_wait_logs_delete(kubectl: Any, namespace: str,
                                           wait_until: Any) -> None:
    ns = ("-n", namespace)
    out = kubectl("create", "-f", "-", *ns, input=MANIFEST)
    assert "deployment.apps/hello created" in out and "service/hello created" in out

    out = kubectl("get", "deployments", *ns)
    assert out.splitlines()[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert out.splitlines()[1].split()[0] == "hello"

    kubectl("wait", "--for=condition=Available", "deployment/hello", "--timeout=60s", *ns)
    kubectl("wait", "--for=condition=Ready", "pod", "-l", "app=hello", "--timeout=60s", *ns)
    pods = json.loads(kubectl("get", "pods", "-l", "app=hello", "-o", "json", *ns))["items"]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"

    wait_until(lambda: "hello from the pod" in kubectl("logs", "deployment/hello", *ns),
               30, "the pod's output in kubectl logs")
    assert "hello from the pod" in kubectl("logs", pods[0]["metadata"]["name"], "-c", "web", *ns)

    assert "scaled" in kubectl("scale", "deployment/hello", "--replicas=2", *ns)
    kubectl("wait", "--for=jsonpath={.status.readyReplicas}=2", "deployment/hello",
            "--timeout=60s", *ns)
    out = kubectl("get", "pods", "-l", "app=hello", "-o", "name", *ns)
    assert len(out.split()) == 2

    out = kubectl("get", "svc", "hello", "-o", "jsonpath={.spec.clusterIP}", *ns)
    assert out.startswith("10.96.")

    out = kubectl("delete", "deployment", "hello", *ns, timeout=90)
    assert 'deployment.apps "hello" deleted' in out
    wait_until(lambda: not kubectl("get", "pods", "-l", "app=hello", "-o", "name", *ns).strip(),
               30, "the deployment's pods to go")
    result = kubectl.run("get", "deployment", "hello", *ns, check=False)
    assert result.returncode != 0
    assert 'deployments.apps "hello" not found' in result.stderr


def test_apply_and_patch(kubectl: Any, namespace: str) -> None:
    ns = ("-n", namespace)
    out = kubectl("apply", "-f", "-", *ns, input=MANIFEST)
    assert "deployment.apps/hello created" in out
    changed = MANIFEST.replace("replicas: 1", "replicas: 0")
    assert "deployment.apps/hello configured" in kubectl("apply", "-f", "-", *ns, input=changed)
    assert kubectl("get", "deploy", "hello", "-o", "jsonpath={.spec.replicas}", *ns) == "0"
    kubectl("patch", "deployment", "hello", "-p", '{"metadata":{"labels":{"x":"y"}}}', *ns)
    kubectl("patch", "deployment", "hello", "--type=merge",
            "-p", '{"metadata":{"annotations":{"a":"b"}}}', *ns)
    kubectl("patch", "deployment", "hello", "--type=json",
            "-p", '[{"op":"replace","path":"/spec/replicas","value":0}]', *ns)
    got = json.loads(kubectl("get", "deploy", "hello", "-o", "json", *ns))
    assert got["metadata"]["labels"]["x"] == "y" and got["metadata"]["annotations"]["a"] == "b"


def test_restricted_context_is_forbidden_to_patch(kubectl: Any, namespace: str,
                                                  cluster: Any) -> None:
    import yaml
    with open(cluster.kubeconfig) as f:
        contexts = yaml.safe_load(f)["contexts"]
    restricted = next(c["name"] for c in contexts if c["context"]["user"] == "restricted")
    ns = ("-n", namespace)
    kubectl("create", "-f", "-", *ns, input=MANIFEST.replace("replicas: 1", "replicas: 0"))
    assert "hello" in kubectl("--context", restricted, "get", "deploy", *ns)
    result = kubectl.run("--context", restricted, "scale", "deployment/hello", "--replicas=1",
                         *ns, check=False)
    assert result.returncode != 0
    assert ('User "restricted" cannot patch resource "deployments/scale" in API group "apps" '
            f'in the namespace "{namespace}"') in result.stderr
    result = kubectl.run("--context", restricted, "patch", "deployment", "hello", "-p",
                         '{"spec":{"replicas":1}}', *ns, check=False)
    assert result.returncode != 0
    assert ('Error from server (Forbidden): deployments.apps "hello" is forbidden: User '
            '"restricted" cannot patch resource "deployments" in API group "apps" in the '
            f'namespace "{namespace}"') in result.stderr


def test_create_invalid_and_existing(kubectl: Any, namespace: str) -> None:
    ns = ("-n", namespace)
    bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n"
    result = kubectl.run("create", "-f", "-", *ns, input=bad, check=False)
    assert result.returncode != 0
    assert 'The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"' \
        in result.stderr
    good = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: good\n"
    kubectl("create", "-f", "-", *ns, input=good)
    result = kubectl.run("create", "-f", "-", *ns, input=good, check=False)
    assert 'Error from server (AlreadyExists)' in result.stderr
    assert 'configmaps "good" already exists' in result.stderr


def test_get_all_namespaces_and_discovery_commands(kubectl: Any) -> None:
    assert "kube-system" in kubectl("get", "namespaces")
    resources = kubectl("api-resources")
    for name in ("deployments", "pods", "services", "configmaps", "replicasets"):
        assert name in resources
    assert "apps/v1" in kubectl("api-versions")
    assert "Server Version: v1." in kubectl("version")
    assert "kubernetes" in kubectl("get", "svc", "-A")
