"""Point 1: HTTPS with the cluster's own CA, four users/contexts, 401/403 worded like Kubernetes.

Uses the official client (sync) and raw HTTPS with the kubeconfig's own credentials.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster


def _kubeconfig(cluster: Any) -> dict[str, Any]:
    with open(cluster.kubeconfig) as f:
        return yaml.safe_load(f)


def _user(kc: dict[str, Any], context: str) -> dict[str, Any]:
    ctx = next(c["context"] for c in kc["contexts"] if c["name"] == context)
    return next(u["user"] for u in kc["users"] if u["name"] == ctx["user"])


def _ca_context(kc: dict[str, Any]) -> ssl.SSLContext:
    ca = base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    return ssl.create_default_context(cadata=ca)


def _raw(kc: dict[str, Any], method: str, path: str, token: str | None,
         body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    server = kc["clusters"][0]["cluster"]["server"]
    headers = {"Accept": "application/json", "Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, context=_ca_context(kc), timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _client(cluster: Any, context: str) -> client.ApiClient:
    return config.new_client_from_config(config_file=cluster.kubeconfig, context=context)


def test_kubeconfig_has_four_contexts_token_current(cluster: Any) -> None:
    kc = _kubeconfig(cluster)
    names = {c["name"] for c in kc["contexts"]}
    assert len(names) == 4
    current = _user(kc, kc["current-context"])
    assert "token" in current
    cert_users = [u for u in kc["users"] if "client-certificate-data" in u["user"]]
    assert len(cert_users) == 1
    assert any(u["name"] == "restricted" and "token" in u["user"] for u in kc["users"])
    assert kc["clusters"][0]["cluster"]["server"].startswith("https://")


def test_server_certificate_needs_the_cluster_ca(cluster: Any) -> None:
    kc = _kubeconfig(cluster)
    server = kc["clusters"][0]["cluster"]["server"]
    # Without the cluster's CA the server is not trusted ...
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(server + "/version", context=ssl.create_default_context(),
                               timeout=10)
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    # ... with it, the certificate verifies including the host name.
    with urllib.request.urlopen(server + "/version", context=_ca_context(kc), timeout=10) as r:
        assert json.loads(r.read())["major"] == "1"


@pytest.mark.parametrize("context_index", [0, 1])
def test_admin_token_and_client_cert_may_do_everything(cluster: Any, context_index: int) -> None:
    kc = _kubeconfig(cluster)
    admins = [c["name"] for c in kc["contexts"]
              if "restricted" not in c["context"]["user"]]
    with _client(cluster, admins[context_index]) as api:
        core = client.CoreV1Api(api)
        name = f"auth-{context_index}"
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name), data={"a": "1"}))
        core.patch_namespaced_config_map(name, "default", {"data": {"a": "2"}})
        assert core.read_namespaced_config_map(name, "default").data == {"a": "2"}
        core.delete_namespaced_config_map(name, "default")


def test_client_certificate_user_name_is_its_cn(cluster: Any) -> None:
    kc = _kubeconfig(cluster)
    cert_user = next(u["user"] for u in kc["users"] if "client-certificate-data" in u["user"])
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(base64.b64decode(cert_user["client-certificate-data"]))
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(
        x509.oid.NameOID.ORGANIZATION_NAME)]
    assert cn and "system:masters" in orgs


def test_no_or_bad_credentials_get_401_status(cluster: Any) -> None:
    kc = _kubeconfig(cluster)
    for token in (None, "not-a-token"):
        code, body = _raw(kc, "GET", "/api/v1/namespaces/default/pods", token)
        assert code == 401
        assert body["kind"] == "Status" and body["reason"] == "Unauthorized"
        assert body["code"] == 401 and body["message"] == "Unauthorized"


def _restricted(cluster: Any) -> client.ApiClient:
    return _client(cluster, next(c["name"] for c in _kubeconfig(cluster)["contexts"]
                                 if c["context"]["user"] == "restricted"))


def test_restricted_may_get_list_watch(cluster: Any, apps_v1: Any) -> None:
    with _restricted(cluster) as api:
        core = client.CoreV1Api(api)
        assert core.read_namespace("default").metadata.name == "default"
        assert any(n.metadata.name == "kube-system" for n in core.list_namespace().items)
        from kubernetes import watch
        events = list(watch.Watch().stream(core.list_namespace, timeout_seconds=1))
        assert {e["object"].metadata.name for e in events} >= {"default", "kube-system"}


def test_restricted_patch_is_forbidden_with_kubernetes_wording(
        cluster: Any, apps_v1: Any, namespace: str) -> None:
    body = {
        "metadata": {"name": "hello"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "hello"}},
                 "template": {"metadata": {"labels": {"app": "hello"}},
                              "spec": {"containers": [{"name": "c", "image": "x",
                                                       "command": ["true"]}]}}},
    }
    apps_v1.create_namespaced_deployment(namespace, body)
    with _restricted(cluster) as api:
        with pytest.raises(ApiException) as info:
            client.AppsV1Api(api).patch_namespaced_deployment(
                "hello", namespace, {"spec": {"replicas": 1}})
    assert info.value.status == 403
    status = json.loads(info.value.body)
    assert status["kind"] == "Status" and status["reason"] == "Forbidden"
    assert status["message"] == (
        'deployments.apps "hello" is forbidden: User "restricted" cannot patch resource '
        f'"deployments" in API group "apps" in the namespace "{namespace}"')
    assert status["details"] == {"name": "hello", "group": "apps", "kind": "deployments"}
    assert apps_v1.read_namespaced_deployment("hello", namespace).spec.replicas == 0


def test_restricted_create_update_delete_forbidden(cluster: Any, namespace: str) -> None:
    kc = _kubeconfig(cluster)
    token = next(u["user"]["token"] for u in kc["users"] if u["name"] == "restricted")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    code, body = _raw(kc, "POST", f"/api/v1/namespaces/{namespace}/configmaps", token, cm)
    assert code == 403
    assert body["message"] == (
        'configmaps is forbidden: User "restricted" cannot create resource "configmaps" in '
        f'API group "" in the namespace "{namespace}"')
    code, body = _raw(kc, "PUT", f"/api/v1/namespaces/{namespace}/configmaps/x", token, cm)
    assert code == 403 and "cannot update resource" in body["message"]
    code, body = _raw(kc, "DELETE", f"/api/v1/namespaces/{namespace}/configmaps/x", token)
    assert code == 403 and 'configmaps "x" is forbidden' in body["message"]
    code, body = _raw(kc, "DELETE", "/api/v1/namespaces/kube-public", token)
    assert code == 403
    assert body["message"] == (
        'namespaces "kube-public" is forbidden: User "restricted" cannot delete resource '
        '"namespaces" in API group "" at the cluster scope')


def test_restricted_portforward_forbidden_with_subresource_wording(
        cluster: Any, namespace: str) -> None:
    kc = _kubeconfig(cluster)
    token = next(u["user"]["token"] for u in kc["users"] if u["name"] == "restricted")
    code, body = _raw(kc, "POST", f"/api/v1/namespaces/{namespace}/pods/p/portforward?ports=80",
                      token)
    assert code == 403
    assert body["message"] == (
        'pods "p" is forbidden: User "restricted" cannot create resource "pods/portforward" '
        f'in API group "" in the namespace "{namespace}"')


def test_tls_certificate_names(cluster: Any, core_v1: Any) -> None:
    kc = _kubeconfig(cluster)
    server = kc["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    ctx = _ca_context(kc)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="kubernetes.default.svc") as tls:
        sans = {value for _, value in tls.getpeercert()["subjectAltName"]}
    kube_ip = core_v1.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    gateway = core_v1.read_namespaced_endpoints("kubernetes", "default") \
        .subsets[0].addresses[0].ip
    assert {"127.0.0.1", "localhost", "kubernetes.default.svc", kube_ip, gateway} <= sans
