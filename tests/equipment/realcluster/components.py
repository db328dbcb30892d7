"""Each component's configuration and command line, as pure functions of the cluster's Config,
PKI paths and binaries (no I/O here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import CLUSTER_DOMAIN, NODE_NAME, Config
from .images import PAUSE_IMAGE
from .pki import ClusterPki

ADMISSION_PLUGINS = (
    "NamespaceLifecycle", "LimitRanger", "ServiceAccount", "PodSecurity", "ResourceQuota",
    "DefaultTolerationSeconds", "NodeRestriction", "Priority", "TaintNodesByCondition",
    "DefaultStorageClass", "StorageObjectInUseProtection", "PersistentVolumeClaimResize",
    "RuntimeClass", "CertificateApproval", "CertificateSigning",
    "CertificateSubjectRestriction", "DefaultIngressClass", "MutatingAdmissionWebhook",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionWebhook",
)
CNI_NETWORK = "bridge-real"


def containerd_toml(c: Config) -> str:
    s = c.path("containerd")
    return f"""version = 2
root = "{s}/root"
state = "{s}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{c.containerd_socket}"
[ttrpc]
  address = "{s}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which this machine's root may
  # lack ("failed to update /proc/self/oom_score_adj: Permission denied" from runc): keep
  # containers at or above containerd's own score.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{s}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{c.path('cni', 'net.d')}"
"""


def cni_conflist(c: Config) -> dict[str, Any]:
    return {"cniVersion": "0.4.0", "name": CNI_NETWORK, "plugins": [
        {"type": "bridge", "bridge": c.bridge_interface, "isGateway": True, "ipMasq": True,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": c.pod_cidr}]],
                  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(c.path("cni", "ipam"))}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}


def etcd_args(c: Config, pki: ClusterPki) -> list[str]:
    client = f"https://127.0.0.1:{c.etcd_client_port}"
    peer = f"https://127.0.0.1:{c.etcd_peer_port}"
    return [
        "--name", NODE_NAME, "--data-dir", str(c.path("etcd")),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{NODE_NAME}={peer}", "--initial-cluster-state", "new",
        "--cert-file", str(pki.etcd.cert), "--key-file", str(pki.etcd.key),
        "--trusted-ca-file", str(pki.ca), "--client-cert-auth",
        "--peer-cert-file", str(pki.etcd.cert), "--peer-key-file", str(pki.etcd.key),
        "--peer-trusted-ca-file", str(pki.ca), "--peer-client-cert-auth",
        "--listen-metrics-urls", "", "--log-level", "warn",
        "--quota-backend-bytes", str(2 << 30),
    ]


def apiserver_args(c: Config, pki: ClusterPki, token_file: Path) -> list[str]:
    return [
        f"--etcd-servers=https://127.0.0.1:{c.etcd_client_port}",
        f"--etcd-cafile={pki.ca}", f"--etcd-certfile={pki.apiserver_etcd_client.cert}",
        f"--etcd-keyfile={pki.apiserver_etcd_client.key}",
        "--bind-address=0.0.0.0", f"--secure-port={c.apiserver_port}",
        f"--advertise-address={c.node_ip}",
        f"--tls-cert-file={pki.apiserver.cert}", f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca}", f"--token-auth-file={token_file}",
        f"--service-cluster-ip-range={c.service_cidr}",
        "--authorization-mode=Node,RBAC",
        f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
        "--allow-privileged=true",
        f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
        f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
        f"--kubelet-certificate-authority={pki.ca}",
        "--kubelet-preferred-address-types=InternalIP",
        "--profiling=false", "--v=1",
    ]


def controller_manager_args(c: Config, pki: ClusterPki, kubeconfig: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca}",
        "--use-service-account-credentials=true", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={c.controller_manager_port}",
        f"--cluster-cidr={c.pod_cidr}", f"--service-cluster-ip-range={c.service_cidr}",
        "--profiling=false", "--v=1",
    ]


def scheduler_args(c: Config, kubeconfig: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={c.scheduler_port}",
        "--profiling=false", "--v=1",
    ]


def kubelet_config(c: Config, pki: ClusterPki, resolv_conf: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this kernel has cgroup v1 (hybrid)
        "cgroupDriver": "cgroupfs", "cgroupRoot": c.cgroup_root, "cgroupsPerQOS": True,
        "containerRuntimeEndpoint": f"unix://{c.containerd_socket}",
        "address": c.node_ip, "port": c.kubelet_port,
        "healthzBindAddress": "127.0.0.1", "healthzPort": c.kubelet_healthz_port,
        "readOnlyPort": 0,
        "tlsCertFile": str(pki.kubelet.cert), "tlsPrivateKeyFile": str(pki.kubelet.key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki.ca)}},
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN, "clusterDNS": [c.dns_service_ip],
        "resolvConf": resolv_conf,
        "failSwapOn": False, "protectKernelDefaults": False,
        "podLogsDir": str(c.path("pod-logs")),
        "staticPodPath": "", "serializeImagePulls": False,
        # Nothing to pull from and a shared disk: never evict or collect images for space.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "imageMinimumGCAge": "24h",
        "localStorageCapacityIsolation": True,
        "nodeStatusReportFrequency": "10s", "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "5s", "fileCheckFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }


def kubelet_args(c: Config, config_file: Path, kubeconfig: Path) -> list[str]:
    return [
        f"--config={config_file}", f"--kubeconfig={kubeconfig}",
        f"--root-dir={c.path('kubelet')}", f"--cert-dir={c.path('kubelet', 'pki')}",
        f"--node-ip={c.node_ip}", f"--hostname-override={NODE_NAME}", "--v=1",
    ]


def kube_proxy_config(c: Config, kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables", "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME, "clusterCIDR": c.pod_cidr,
        "bindAddress": c.node_ip,
        "healthzBindAddress": f"127.0.0.1:{c.proxy_healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{c.proxy_metrics_port}",
        # Leave the host's conntrack table settings and route_localnet alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False,
                     "syncPeriod": "10s", "minSyncPeriod": "0s"},
        "detectLocalMode": "ClusterCIDR",
    }


def kube_proxy_args(config_file: Path) -> list[str]:
    return [f"--config={config_file}", "--v=1"]


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1)
