"""The Kubernetes API edge: client, credentials, kubeconfig, retries, conditional writes."""
