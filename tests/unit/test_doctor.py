"""`bridge doctor`: the permission table, the report lines, and the README's Role as the test
cluster's least-privilege user (the command against the test cluster's contexts:
tests/clusterchecks/test_doctor_contexts.py)."""

from __future__ import annotations

import os
from typing import Any

import yaml

from bridge.doctor import NEEDS, Report, applies, image_on_nodes, lines, minor_version, review
from bridge.model import controllers
from tests.equipment.localcluster.auth import LEAST_PRIVILEGE_RULES

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


def test_an_unreachable_server_is_said_as_such_not_as_missing_permissions() -> None:
    """A refused connection: one line naming the server and the context, no permission line
    and no 'ask your administrator', after one connection attempt."""
    import socket

    import anyio
    from kubernetes.aio import client as kclient

    from bridge.doctor import examine
    from bridge.kube.client import Kube

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    asked: list[str] = []

    async def run() -> Report:
        config = kclient.Configuration(host=f"https://127.0.0.1:{port}")
        kube = Kube(kclient.ApiClient(config), "shop", "staging", config.host)
        once = kube._request_once

        async def counting(method: str, path: str, **kw: Any) -> Any:
            asked.append(path)
            return await once(method, path, **kw)

        kube._request_once = counting  # type: ignore[method-assign]
        try:
            return await examine(kube, "hello")
        finally:
            await kube.close()

    report = anyio.run(run)
    assert not report.ok
    assert lines(report) == [
        f"unreachable: cannot reach the Kubernetes API at https://127.0.0.1:{port} (context "
        "staging): connection refused: nothing listens there (is the cluster running, is the "
        "kubeconfig's server right?)"]
    assert asked == ["/version"]
