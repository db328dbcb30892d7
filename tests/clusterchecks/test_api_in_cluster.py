"""The API server from inside a pod: the `kubernetes` Service (KUBERNETES_SERVICE_HOST/PORT)
leads to it, and its certificate is valid for kubernetes.default.svc and the Service IP."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster

CLIENT = """
import json, os, socket, ssl
ctx = ssl.create_default_context(cadata=os.environ["CA"])
host, port = os.environ["KUBERNETES_SERVICE_HOST"], int(os.environ["KUBERNETES_SERVICE_PORT"])
for name in ("kubernetes.default.svc", host):  # the certificate names both
    with socket.create_connection((host, port), 10) as raw, \\
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall((f"GET /api/v1/namespaces/default/services/kubernetes HTTP/1.1\\r\\n"
                     f"Host: {name}\\r\\nAuthorization: Bearer {os.environ['TOKEN']}\\r\\n"
                     f"Connection: close\\r\\n\\r\\n").encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\\r\\n\\r\\n")
    print(name, head.split()[1].decode(), json.loads(body)["spec"]["clusterIP"], flush=True)
"""


def test_pod_reaches_api_through_kubernetes_service(cluster: Any, core_v1: Any, namespace: str,
                                                    wait_until: Any) -> None:
    with open(cluster.kubeconfig) as f:
        kc = yaml.safe_load(f)
    ca = base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    token = next(u["user"]["token"] for u in kc["users"] if u["name"] == "restricted")
    core_v1.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="ca"), data={"ca.crt": ca}))
    core_v1.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="tok"), string_data={"token": token}))
    core_v1.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="in-cluster"),
        spec=client.V1PodSpec(restart_policy="Never", containers=[client.V1Container(
            name="c", image="python:3", command=["python3", "-c", CLIENT],
            env=[client.V1EnvVar(name="CA", value_from=client.V1EnvVarSource(
                     config_map_key_ref=client.V1ConfigMapKeySelector(name="ca",
                                                                      key="ca.crt"))),
                 client.V1EnvVar(name="TOKEN", value_from=client.V1EnvVarSource(
                     secret_key_ref=client.V1SecretKeySelector(name="tok",
                                                               key="token")))])])))

    def finished() -> Any:
        pod = core_v1.read_namespaced_pod("in-cluster", namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = wait_until(finished, 30, "the in-cluster client to finish")
    try:
        log = core_v1.read_namespaced_pod_log("in-cluster", namespace)
    except ApiException as err:
        log = err.body
    kube_ip = core_v1.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert pod.status.phase == "Succeeded", log
    assert log.splitlines() == [f"kubernetes.default.svc 200 {kube_ip}",
                                f"{kube_ip} 200 {kube_ip}"]
