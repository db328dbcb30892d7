"""`bridge doctor`: the permission table, the report lines, and the command against the local
test cluster's admin and restricted (get/list/watch only) contexts."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import yaml

from bridge import controllers
from bridge.doctor import NEEDS, Report, applies, image_on_nodes, lines, minor_version, review
from tests.cluster.auth import LEAST_PRIVILEGE_RULES
from tests.cluster.kubeconfig import CONTEXT_ADMIN, CONTEXT_LEAST, CONTEXT_RESTRICTED

PORTFORWARD_GET = next(n for n in NEEDS if n.subresource == "portforward" and n.verb == "get")
PORTFORWARD_CREATE = next(n for n in NEEDS
                          if n.subresource == "portforward" and n.verb == "create")


def test_portforward_needs_get_and_create_from_1_35() -> None:
    assert PORTFORWARD_GET.required and PORTFORWARD_GET.from_minor == 0
    assert PORTFORWARD_CREATE.from_minor == 35
    assert not applies(PORTFORWARD_CREATE, 34) and applies(PORTFORWARD_CREATE, 35)
    assert applies(PORTFORWARD_CREATE, None)  # unknown version: the newest rules
    assert minor_version({"major": "1", "minor": "35+"}) == 35
    assert minor_version({"minor": ""}) is None


def test_review_body() -> None:
    body = review(PORTFORWARD_GET, "shop")
    assert body["kind"] == "SelfSubjectAccessReview"
    assert body["spec"]["resourceAttributes"] == {
        "namespace": "shop", "verb": "get", "group": "", "resource": "pods",
        "subresource": "portforward"}


def test_lines_name_what_is_missing_one_each() -> None:
    report = Report("ctx", "shop", version="v1.34.2", minor=34)
    report.allowed = {n: True for n in NEEDS}
    report.allowed[PORTFORWARD_GET] = False
    optional = next(n for n in NEEDS if not n.required)
    report.allowed[optional] = False
    report.allowed[PORTFORWARD_CREATE] = False  # not needed on 1.34
    report.findings = [controllers.Finding("KEDA", "scaledobject/x", "KEDA scales it",
                                           "pause it: annotate")]
    out = lines(report)
    assert out[0] == "cluster: Kubernetes v1.34.2 (context ctx, namespace shop)"
    assert ("missing: get pods/portforward in namespace shop (to open the tunnel "
            "(websocket port-forward))") in out
    assert sum(line.startswith("missing:") for line in out) == 1
    assert any(line.startswith("optional, missing:") for line in out)
    assert "warning: KEDA scales it; pause it: annotate" in out
    assert not report.ok
    report.allowed[PORTFORWARD_GET] = True
    assert report.ok


def test_image_on_nodes() -> None:
    nodes: list[Any] = [{"status": {"images": [{"names": ["a:1", "docker.io/a:1"]}]}},
                        {"status": {"images": "junk"}}, "x"]
    assert image_on_nodes(nodes, "a:1")
    assert not image_on_nodes(nodes, "b:1")


def run_doctor(cluster: Any, context: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    return subprocess.run([sys.executable, "-m", "bridge.cli", "--context", context, "doctor",
                           *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


@pytest.mark.cluster
def test_doctor_with_the_restricted_context(cluster: Any, kubectl: Any) -> None:
    result = run_doctor(cluster, CONTEXT_RESTRICTED)
    assert result.returncode == 1, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("cluster: Kubernetes v1.")
    missing = {line.split(" in namespace")[0] for line in out if line.startswith("missing:")}
    assert missing == {"missing: create deployments.apps", "missing: patch deployments.apps",
                       "missing: delete deployments.apps",
                       "missing: create pods/portforward"}
    # the test cluster answers as kubectl sees it
    can = kubectl.run("--context", CONTEXT_RESTRICTED, "auth", "can-i", "create",
                      "pods/portforward", check=False)
    assert can.stdout.strip() == "no"
    can = kubectl.run("--context", CONTEXT_RESTRICTED, "auth", "can-i", "get",
                      "pods/portforward", check=False)
    assert can.stdout.strip() == "yes"


@pytest.mark.cluster
def test_doctor_with_the_admin_context(cluster: Any) -> None:
    result = run_doctor(cluster, CONTEXT_ADMIN, "no-such-deployment")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert not [line for line in out if "missing" in line]
    assert any(line.startswith("permissions: all ") for line in out)
    assert any(line.startswith("target: ") and "no-such-deployment" in line for line in out)


def test_doctor_needs_match_the_readme_role() -> None:
    """The README's Role grants exactly what doctor checks (required and optional)."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    role = readme.split("kind: Role\n", 1)[1].split("```", 1)[0]
    for need in NEEDS:
        resource = f"{need.resource}/{need.subresource}" if need.subresource else need.resource
        block = next((b for b in role.split("- apiGroups:")
                      if f'"{need.group}"' in b.split("\n")[0] and
                      f'"{resource}"' in b.split("resources:")[1].split("\n")[0]), None)
        assert block is not None, f"README Role lacks {need.what}"
        assert f'"{need.verb}"' in block.split("verbs:")[1].split("\n")[0], need.what



@pytest.mark.cluster
def test_websocket_port_forward_needs_create_as_on_1_35(cluster: Any) -> None:
    """The restricted user may `get` pods/portforward but not `create`: the websocket upgrade
    (a GET) is refused, as on Kubernetes 1.35+, with bridge's one-line wording."""
    import anyio

    from bridge.errors import BridgeError
    from bridge.kube import Kube
    from bridge.portforward import PortForwarder

    async def main() -> str:
        kube = await Kube.connect(cluster.kubeconfig, CONTEXT_RESTRICTED)
        async with kube, PortForwarder(kube.api_client, "default", "any-pod") as forwarder:
            with pytest.raises(BridgeError) as info:
                await forwarder.open(80)
            return str(info.value)

    message = anyio.run(main)
    assert "forbidden: you may not port-forward to pods in namespace default" in message
    assert "create on pods/portforward" in message


def readme_role() -> dict[str, Any]:
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    role: dict[str, Any] = yaml.safe_load(block)
    assert role["kind"] == "Role"
    return role


def test_test_clusters_least_privilege_user_has_exactly_the_readme_role() -> None:
    rules = {(frozenset(r["apiGroups"]), frozenset(r["resources"]), frozenset(r["verbs"]))
             for r in readme_role()["rules"]}
    assert rules == set(LEAST_PRIVILEGE_RULES)


@pytest.mark.cluster
def test_doctor_with_the_least_privilege_context(cluster: Any) -> None:
    result = run_doctor(cluster, CONTEXT_LEAST)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert not [line for line in out if "missing" in line], out
    assert any(line.startswith("permissions: all ") for line in out)
