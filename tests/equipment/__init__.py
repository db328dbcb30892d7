"""Test equipment: what the suites run against, neither product nor tests (see README.md here).

- localcluster/  the local test cluster (`scripts/test-cluster`): a fake API server, kubelet,
                 controllers, DNS and port-forward in network namespaces on this machine;
                 fixture.py starts it for a test session
- realcluster/   the real single-node Kubernetes (`scripts/real-cluster`): upstream components
                 compiled from go/, images, PKI, kubeconfigs, the mesh webhook; fixture.py
                 starts it for a test session
- bench/         the benchmark harness (`scripts/bench`): workloads, paths, Toxiproxy, wrk, report
- faults/        the fault suite (`scripts/faults`): the run, its probes and its counting
- clients.py     kubectl (and `kubectl port-forward`) and the official client, for a kubeconfig
- workload.py    the sample workload the end-to-end and fault suites swap
- dap.py         a Debug Adapter Protocol client playing an IDE's part against debugpy

It imports none of the suites (tests/unit/test_architecture.py checks it).
"""
