"""The API objects a fresh real cluster is given before it is declared ready: RBAC for the
kubeconfig's users, the least-privilege ServiceAccount behind the exec-plugin context, and
CoreDNS. Pure data."""

from __future__ import annotations

from typing import Any

from tests.equipment.localcluster.auth import LEAST_PRIVILEGE_RULES

from .config import CLUSTER_DOMAIN, Config
from .images import COREDNS_IMAGE

RESTRICTED_USER = "restricted"  # the token user of the `restricted` context
MINTER_USER = "bridge-token-minter"  # the exec plugin's certificate user
SA_NAMESPACE = "bridge-system"
SA_NAME = "bridge-user"

# Exactly what the README says bridge needs (a namespace's worth, granted cluster-wide so the
# tests' per-test namespaces work): the test cluster's LEAST_PRIVILEGE_RULES, which a unit test
# checks against the README's Role. pods/portforward: the websocket port-forward is a GET and
# is authorised as `get` up to 1.34; from 1.35 also as `create` (the SPDY one always `create`).
BRIDGE_USER_RULES: list[dict[str, Any]] = [
    {"apiGroups": sorted(groups), "resources": sorted(resources), "verbs": sorted(verbs)}
    for groups, resources, verbs in LEAST_PRIVILEGE_RULES]


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "bridge-real"}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": _meta(name), "rules": rules}


def _binding(kind: str, name: str, role_kind: str, role: str, subject: dict[str, Any],
             namespace: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": _meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                        "name": role},
            "subjects": [subject]}


def _user(name: str) -> dict[str, Any]:
    return {"kind": "User", "name": name, "apiGroup": "rbac.authorization.k8s.io"}


def rbac() -> list[dict[str, Any]]:
    return [
        # The API server's own client certificate, for logs/exec/port-forward at the kubelet.
        _binding("ClusterRoleBinding", "bridge-real:apiserver-kubelet", "ClusterRole",
                 "system:kubelet-api-admin", _user("kube-apiserver-kubelet-client")),
        _cluster_role("bridge-real:read-only", [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]),
        _binding("ClusterRoleBinding", "bridge-real:read-only", "ClusterRole",
                 "bridge-real:read-only", _user(RESTRICTED_USER)),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(SA_NAMESPACE)},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(SA_NAME, SA_NAMESPACE), "automountServiceAccountToken": False},
        _cluster_role("bridge-real:bridge-user", BRIDGE_USER_RULES),
        _binding("ClusterRoleBinding", "bridge-real:bridge-user", "ClusterRole",
                 "bridge-real:bridge-user",
                 {"kind": "ServiceAccount", "name": SA_NAME, "namespace": SA_NAMESPACE}),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta("token-minter", SA_NAMESPACE),
         "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                    "resourceNames": [SA_NAME], "verbs": ["create"]}]},
        _binding("RoleBinding", "token-minter", "Role", "token-minter", _user(MINTER_USER),
                 SA_NAMESPACE),
        *minter_secrets(),
    ]


def minter_secrets() -> list[dict[str, Any]]:
    """The exec plugin's right to make and delete the Secrets its short-lived tokens are bound
    to (token_exec.py --expire-after), in its own namespace only."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta("token-minter-secrets", SA_NAMESPACE),
         "rules": [{"apiGroups": [""], "resources": ["secrets"],
                    "verbs": ["create", "delete", "get"]}]},
        _binding("RoleBinding", "token-minter-secrets", "Role", "token-minter-secrets",
                 _user(MINTER_USER), SA_NAMESPACE),
    ]


COREFILE = f""".:53 {{
    errors
    health {{
        lameduck 2s
    }}
    ready
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}}
"""


def coredns(c: Config) -> list[dict[str, Any]]:
    ns = "kube-system"
    labels = {"k8s-app": "kube-dns"}
    container = {
        "name": "coredns", "image": COREDNS_IMAGE, "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                          "periodSeconds": 10, "failureThreshold": 5},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}},
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("coredns", ns)},
        _cluster_role("system:coredns", [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
             "verbs": ["list", "watch"]}]),
        _binding("ClusterRoleBinding", "system:coredns", "ClusterRole", "system:coredns",
                 {"kind": "ServiceAccount", "name": "coredns", "namespace": ns}),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("coredns", ns),
         "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("coredns", ns),
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": "coredns", "dnsPolicy": "Default",
                      "priorityClassName": "system-cluster-critical",
                      "containers": [container],
                      "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {**_meta("kube-dns", ns),
                                                             "labels": labels},
         "spec": {"selector": labels, "clusterIP": c.dns_service_ip, "ports": [
             {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}},
    ]


def smoke_pod(image: str) -> dict[str, Any]:
    """The pod whose successful run makes the cluster `ready`."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _meta("bridge-real-smoke", "default"),
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "smoke", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", "print('bridge-real smoke ok')"]}]}}
