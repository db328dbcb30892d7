"""Test equipment: what the suites run against, neither product nor tests (see README.md here).

- localcluster/  the local test cluster (`scripts/test-cluster`): a fake API server, kubelet,
                 controllers, DNS and port-forward in network namespaces on this machine
- realcluster/   the real single-node Kubernetes (`scripts/real-cluster`): upstream components
                 compiled from go/, images, PKI, kubeconfigs, the mesh webhook
- bench/         the benchmark harness (`scripts/bench`): workloads, paths, Toxiproxy, wrk, report
- faults/        the fault suite (`scripts/faults`): the run, its probes and its counting
- dap.py         a Debug Adapter Protocol client playing an IDE's part against debugpy
"""
