"""A real single-node Kubernetes for bridge's end-to-end suite: upstream etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kubelet, kube-proxy and CoreDNS compiled from their Go
modules, containerd + runc + CNI plugins from Debian, images built here (no registry).
Entry point: `scripts/real-cluster --kubeconfig PATH`."""
