"""KEDA / Argo CD / Flux / owner detection, and the replica drift warning."""

from __future__ import annotations

from typing import Any

from bridge.model.controllers import DriftWatch, findings, keda_targets, replicas_manager


def deployment(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
               **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "hello", "namespace": "shop", "labels": labels or {},
                         "annotations": annotations or {}, **meta},
            "spec": {"replicas": 0}}


def scaled_object(name: str = "hello-so", target: str = "hello", kind: str | None = None,
                  annotations: dict[str, str] | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": target}
    if kind:
        ref["kind"] = kind
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations or {}},
            "spec": {"scaleTargetRef": ref, "minReplicaCount": 1}}


def test_keda_scaled_object_targeting_the_deployment() -> None:
    got = findings(deployment(), [scaled_object(), scaled_object("other", target="web")])
    assert [(f.controller, f.what) for f in got] == [("KEDA", "scaledobject/hello-so")]
    assert "autoscaling.keda.sh/paused-replicas=0" in got[0].pause
    assert "kubectl -n shop annotate scaledobject hello-so" in got[0].pause


def test_keda_ignores_paused_and_other_kinds() -> None:
    paused = scaled_object(annotations={"autoscaling.keda.sh/paused-replicas": "0"})
    paused2 = scaled_object(annotations={"autoscaling.keda.sh/paused": "true"})
    sts = scaled_object(kind="StatefulSet")
    assert findings(deployment(), [paused, paused2, sts]) == []
    assert not keda_targets({"spec": "junk"}, "hello")


def test_argo_cd_annotation_tracking() -> None:
    dep = deployment(annotations={
        "argocd.argoproj.io/tracking-id": "shop-app:apps/Deployment:shop/hello"})
    (f,) = findings(dep)
    assert (f.controller, f.what, f.certain) == ("Argo CD", "application/shop-app", True)
    assert "argocd app set shop-app --sync-policy none" in f.pause


def test_argo_cd_label_is_a_hint_and_helm_alone_is_not_argo() -> None:
    (f,) = findings(deployment(labels={"app.kubernetes.io/instance": "shop-app"}))
    assert f.controller == "Argo CD" and not f.certain
    helm = deployment(labels={"app.kubernetes.io/instance": "shop",
                              "app.kubernetes.io/managed-by": "Helm"})
    assert findings(helm) == []


def test_flux_kustomization_and_helmrelease() -> None:
    dep = deployment(labels={"kustomize.toolkit.fluxcd.io/name": "apps",
                             "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
                             "helm.toolkit.fluxcd.io/name": "hello",
                             "helm.toolkit.fluxcd.io/namespace": "shop"})
    got = findings(dep)
    assert [(f.controller, f.what) for f in got] == [("Flux", "kustomization/apps"),
                                                     ("Flux", "helmrelease/hello")]
    assert got[0].pause.startswith("pause it: flux suspend kustomization apps -n flux-system")
    assert "flux suspend helmrelease hello -n shop" in got[1].pause


def test_flux_reconcile_disabled_on_the_object_is_respected() -> None:
    dep = deployment(labels={"kustomize.toolkit.fluxcd.io/name": "apps"},
                     annotations={"kustomize.toolkit.fluxcd.io/reconcile": "disabled"})
    assert findings(dep) == []


def test_controlling_owner_reference() -> None:
    dep = deployment(ownerReferences=[
        {"apiVersion": "example.com/v1", "kind": "WebApp", "name": "hello", "uid": "u",
         "controller": True},
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "v"}])
    (f,) = findings(dep)
    assert (f.controller, f.what) == ("owner", "webapp/hello")


def test_plain_deployment_and_junk_fields_find_nothing() -> None:
    assert findings(deployment()) == []
    junk = {"metadata": {"name": "hello", "labels": ["x"], "annotations": 7,
                         "ownerReferences": "nope"}}
    assert findings(junk, [{"spec": None}, "x"]) == []  # type: ignore[list-item]


def managed(manager: str, time: str, subresource: str = "") -> dict[str, Any]:
    entry: dict[str, Any] = {"manager": manager, "operation": "Update", "time": time,
                             "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    if subresource:
        entry["subresource"] = subresource
    return entry


def test_replicas_manager_is_the_latest_other_writer() -> None:
    dep = deployment(managedFields=[
        managed("argocd-controller", "2026-01-01T10:00:00Z"),
        managed("kube-controller-manager", "2026-01-01T11:00:00Z", "scale"),
        managed("bridge", "2026-01-01T12:00:00Z"),
        {"manager": "kubectl", "fieldsV1": {"f:metadata": {}}}])
    assert replicas_manager(dep, ["bridge"]) == "kube-controller-manager (scale)"
    assert replicas_manager(deployment(), ["bridge"]) == ""


def test_drift_warns_once_with_the_cause() -> None:
    so = scaled_object()
    watch = DriftWatch(known=findings(deployment(), [so]))
    dep = deployment(managedFields=[managed("keda-operator", "2026-01-01T10:00:00Z")])
    assert watch.observe(dep) is None  # still 0
    dep["spec"]["replicas"] = 2
    line = watch.observe(dep)
    assert line is not None
    assert "scaled to 2" in line and "set by keda-operator" in line
    assert "likely KEDA" in line and "paused-replicas" in line
    assert watch.observe(dep) is None  # once


def test_drift_absent_replicas_counts_as_one() -> None:
    watch = DriftWatch()
    line = watch.observe({"metadata": {"name": "hello"}, "spec": {}})
    assert line is not None and "scaled to 1" in line and "by another client" in line
