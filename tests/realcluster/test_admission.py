"""Issue 9 on the real cluster: what admission, the scheduler and expiring credentials do to a
swap, and what the cluster looks like afterwards.

- a namespace enforcing Pod Security `restricted`: the proxy pod is admitted, the Service
  reaches the laptop, and the restore leaves the original as it was;
- a ResourceQuota with no room for the proxy pod: bridge stops at once with the quota's reason
  (the ReplicaSet's ReplicaFailure, not its ready timeout), nothing left changed;
- a nodeSelector no node matches: the scheduler's message is shown, bridge waits until its
  timeout and restores;
- a swap that outlives its tokens: the exec plugin's tokens genuinely die after 30 s (bound to
  a Secret the plugin deletes; checked with kubectl), and the swap serves through two
  lifetimes, reconnects through a new port-forward when its proxy pod is replaced, and
  restores.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.model import state
from tests.e2e.support import free_port, http_get, until_laptop_answers, wait_until
from tests.equipment.clients import KUBECTL
from tests.equipment.realcluster import kubeconfigs, objects

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

TOKEN_LIFETIME = 30.0  # seconds the expiring context's tokens are good for
# How long the API server may still accept a token after its Secret is gone (its token
# authentication cache and the Secret informer), a bound for the equipment check.
REVOKED_WITHIN = 30.0

RESTRICTED_POD = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}}
RESTRICTED_CONTAINER = {"securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]},
                                            "runAsNonRoot": True}}


def bridge_objects(w: Any, kind: str) -> list[dict[str, Any]]:
    """Every object of `kind` in the workload's namespace that is bridge's (session label or
    managed-by bridge)."""
    items = json.loads(w.k("get", kind, "-o", "json"))["items"]
    return [o for o in items
            if state.SESSION_LABEL in ((o.get("metadata") or {}).get("labels") or {})
            or ((o.get("metadata") or {}).get("labels") or {}).get(state.MANAGED_BY_LABEL)
            == state.MANAGED_BY]


def assert_nothing_of_bridge(w: Any) -> None:
    """The original with its replicas, all Ready, no lock; no proxy Deployment, ReplicaSet or
    pod (each waited for: the garbage collector removes the ReplicaSets and pods)."""
    dep = w.get("deployment", w.name)
    assert dep["spec"]["replicas"] == w.replicas
    assert w.our_annotations() == {}
    for kind in ("deployments", "replicasets", "pods"):
        wait_until(f"no {kind} of bridge's", lambda kind=kind: bridge_objects(w, kind) == [])
    wait_until("the original to be Ready", lambda: (w.get("deployment", w.name).get("status")
                                                     or {}).get("readyReplicas") == w.replicas)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("bridge: error:")]


def test_swap_in_a_restricted_pod_security_namespace(make_workload: Any, kubectl: Any,
                                                      namespace: str) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")
    w = make_workload(replicas=2, container_extra=RESTRICTED_CONTAINER, pod_extra=RESTRICTED_POD)
    # the equipment: this namespace really refuses a pod that is not restricted
    refused = kubectl.run("-n", namespace, "run", "not-restricted",
                          "--image=python:3.11-slim", "--restart=Never", "--", "true",
                          check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused
    b, port = w.attach()
    until_laptop_answers(w.service_ip(), 80, f"laptop {port}\n")
    w.assert_swapped()
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr
    assert "violates PodSecurity" not in b.stderr, b.stderr
    assert_nothing_of_bridge(w)
    assert http_get(w.service_ip(), 80).startswith("cluster ")


def test_the_proxy_passes_restricted_whatever_the_apps_container_had(
        make_workload: Any, kubectl: Any, namespace: str) -> None:
    """The app runs as root with no securityContext; the namespace enforces `restricted` from
    after it started (its running pods stay; a copy of its pod is refused). The proxy pod is
    admitted all the same: its container's securityContext is bridge's own. (The original
    itself could not be created again under `restricted`, so the label goes before the
    restore.)"""
    w = make_workload(replicas=1)
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")
    template = w.get("deployment", w.name)["spec"]["template"]
    copied = kubectl.run("-n", namespace, "create", "-f", "-", check=False, input=json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app-copy"},
         "spec": template["spec"]}))
    assert copied.returncode != 0 and "violates PodSecurity" in copied.stderr, copied
    b, port = w.attach()
    until_laptop_answers(w.service_ip(), 80, f"laptop {port}\n")
    proxy = bridge_objects(w, "pods")
    assert len(proxy) == 1
    assert proxy[0]["status"].get("phase") == "Running"
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce-",
            "pod-security.kubernetes.io/enforce-version-")
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr
    assert "violates PodSecurity" not in b.stderr, b.stderr
    assert_nothing_of_bridge(w)


@pytest.mark.parametrize("hard", [
    {"pods": "1"},  # no room for one more pod next to the original's
    {"limits.memory": "128Mi"},  # less than the proxy container's explicit limit
], ids=["pods", "memory"])
def test_a_quota_that_refuses_the_proxy_fails_at_once(make_workload: Any, kubectl: Any,
                                                      namespace: str,
                                                      hard: dict[str, str]) -> None:
    w = make_workload(replicas=1)
    quota = f"bridge-test-{next(iter(hard)).replace('.', '-')}"
    kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": quota},
        "spec": {"hard": hard}}))
    wait_until("the quota to count the namespace's use", lambda: set(
        (w.get("resourcequota", quota).get("status") or {}).get("used") or {}) == set(hard))
    port = free_port()
    w.local_server(port)
    started = time.monotonic()
    code, b = w.run_bridge("swap", "hello", "--port", f"http:{port}", "--timeout", "120")
    took = time.monotonic() - started
    print(f"\nResourceQuota {hard} refusal: bridge exited {code} after {took:.1f}s "
          "(timeout 120s)")
    assert code != 0, b.stderr
    errors = error_lines(b.stderr)
    assert len(errors) == 1, b.stderr
    assert "ResourceQuota" in errors[0] and quota in errors[0], errors[0]
    assert "exceeded quota" in errors[0], errors[0]
    assert "timed out" not in b.stderr, b.stderr  # the ReplicaFailure reason, not the timeout
    assert_nothing_of_bridge(w)


def test_an_unschedulable_proxy_is_shown_then_times_out(make_workload: Any, kubectl: Any,
                                                        request: pytest.FixtureRequest) -> None:
    node = kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").strip()
    key = f"bridge-test.example/admission-{secrets.token_hex(4)}"
    request.addfinalizer(lambda: kubectl("label", "node", node, f"{key}-", check=False))
    kubectl("label", "node", node, f"{key}=yes")
    w = make_workload(replicas=1, pod_extra={"nodeSelector": {key: "yes"}})
    kubectl("label", "node", node, f"{key}-")  # the running pod stays; a new one fits nowhere
    port = free_port()
    w.local_server(port)
    code, b = w.run_bridge("swap", "hello", "--port", f"http:{port}", "--timeout", "20")
    assert code != 0, b.stderr
    assert "proxy pod waiting: Unschedulable:" in b.stderr, b.stderr
    assert "didn't match Pod's node affinity/selector" in b.stderr, b.stderr
    errors = error_lines(b.stderr)
    assert len(errors) == 1 and "timed out after 20s" in errors[0], b.stderr
    assert_nothing_of_bridge(w)
    assert http_get(w.service_ip(), 80).startswith("cluster ")


def _run_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _token_kubeconfig(kc: dict[str, Any], token: str, path: Path) -> Path:
    cluster = kc["clusters"][0]["cluster"]
    kubeconfigs.write(path, {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c"})
    return path


def test_a_swap_outlives_its_tokens(make_workload: Any, kubectl: Any, cluster: Any,
                                    tmp_path: Path) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": objects.minter_secrets()}))
    run_log = tmp_path / "plugin-runs.jsonl"
    kc = kubeconfigs.with_expiring_tokens(yaml.safe_load(Path(cluster.kubeconfig).read_text()),
                                          TOKEN_LIFETIME, run_log)
    expiring = tmp_path / "expiring.kubeconfig"
    kubeconfigs.write(expiring, kc)
    w = make_workload(replicas=1)

    # The equipment, checked with kubectl: a token of this plugin works, then is refused.
    plugin = next(u for u in kc["users"] if u["name"].endswith("-expiring"))["user"]["exec"]
    minted = json.loads(subprocess.run([plugin["command"], *plugin["args"]], check=True,
                                       capture_output=True, text=True, timeout=60).stdout)
    first = _token_kubeconfig(kc, minted["status"]["token"], tmp_path / "first.kubeconfig")

    def with_first(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KUBECTL, "--kubeconfig", str(first), "-n", w.namespace, *args],
                              capture_output=True, text=True, timeout=30)

    ok = with_first("get", "pods")
    assert ok.returncode == 0, ok.stderr
    via_plugin = subprocess.run([KUBECTL, "--kubeconfig", str(expiring), "--context",
                                 kubeconfigs.CONTEXT_EXPIRING, "-n", w.namespace, "get",
                                 "deployment", w.name, "-o", "name"],
                                capture_output=True, text=True, timeout=60)
    assert via_plugin.stdout.strip() == f"deployment.apps/{w.name}", via_plugin.stderr

    w.kubeconfig = str(expiring)
    before = len(_run_log(run_log))  # the equipment check's and kubectl's runs
    port = free_port()
    w.local_server(port)
    started = time.monotonic()
    b = w.bridge("--context", kubeconfigs.CONTEXT_EXPIRING, "swap", "hello",
                 "--port", f"http:{port}")
    b.wait_for("attached")
    ip = w.service_ip()
    until_laptop_answers(ip, 80, f"laptop {port}\n")
    # Meanwhile the first token died: the API server refuses it (401) as it will bridge's.
    refused = wait_until("the first token to be refused", lambda: (
        r := with_first("get", "pods")).returncode != 0 and r,
        timeout=TOKEN_LIFETIME + REVOKED_WITHIN, every=1.0)
    assert "Unauthorized" in refused.stderr or "401" in refused.stderr, refused.stderr
    # Serve through the Service for over two token lifetimes, every request by the laptop.
    served = 0
    while time.monotonic() - started < 2 * TOKEN_LIFETIME + 10:
        assert b.proc.poll() is None, b.stderr
        assert http_get(ip, 80) == f"laptop {port}\n"
        served += 1
        time.sleep(1.0)
    w.assert_swapped()
    # A new port-forward long after the first token died: the proxy pod is replaced, bridge
    # reconnects through the API server with a current token, and the laptop answers again.
    old = [p["metadata"]["name"] for p in bridge_objects(w, "pods")]
    assert len(old) == 1, old
    w.k("delete", "pod", old[0], "--wait=false")
    b.wait_for("reconnected", timeout=90)
    wait_until("the laptop to answer through the new proxy pod",
               lambda: http_get(ip, 80) == f"laptop {port}\n")
    for _ in range(5):
        assert http_get(ip, 80) == f"laptop {port}\n"
    runs = _run_log(run_log)[before:]  # bridge's
    # tokens that bridge was given have died (their Secrets are gone) while it kept serving
    gone = [r["secret"] for r in runs if kubectl(
        "-n", objects.SA_NAMESPACE, "get", "secret", r["secret"], "-o", "name",
        "--ignore-not-found") == ""]
    print(f"\nexpiring tokens: bridge ran the plugin {len(runs)} times, {len(gone)} of its "
          f"tokens revoked meanwhile, {served} requests served over "
          f"{time.monotonic() - started:.0f}s")
    assert len(runs) >= 3, runs  # a token at the start and one per lifetime since
    assert runs[0]["secret"] in gone, runs
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr
    assert "Unauthorized" not in b.stderr, b.stderr  # no call went out with a dead token
    assert_nothing_of_bridge(w)
    assert http_get(ip, 80).startswith("cluster ")
