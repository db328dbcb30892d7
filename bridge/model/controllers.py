"""Controllers that would undo a swap: who else sets the original Deployment's replicas.

Pure functions of objects read from the cluster (all untrusted: every field is checked before
use). HPA leaves a Deployment at 0 replicas alone, but these do not:

- KEDA: a ScaledObject whose scaleTargetRef names the Deployment scales it back up (through its
  HPA, and by itself from 0) unless paused (`autoscaling.keda.sh/paused-replicas`).
- Argo CD with self-heal, and Flux (kustomize-controller, helm-controller), re-apply `replicas`
  from Git on their next reconcile.
- An owner reference: the owning controller (an operator) may rewrite the Deployment.

`findings` is asked before a swap; `DriftWatch` watches the original during the session and
names, once, who moved its replicas (from managedFields: the manager that last set them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge.model import state

Obj = dict[str, Any]

KEDA_PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
KEDA_PAUSED = "autoscaling.keda.sh/paused"
ARGO_TRACKING_ID = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE_LABEL = "app.kubernetes.io/instance"
FLUX_KUSTOMIZE = "kustomize.toolkit.fluxcd.io"
FLUX_HELM = "helm.toolkit.fluxcd.io"
FLUX_RECONCILE = "kustomize.toolkit.fluxcd.io/reconcile"


@dataclass(frozen=True)
class Finding:
    controller: str  # "KEDA", "Argo CD", "Flux", "owner"
    what: str  # the object that drives it, e.g. "scaledobject/hello"
    message: str  # one line: what will happen
    pause: str  # one line: how to pause it ("" when there is no general way)
    certain: bool = True  # False: a hint (a label others set too)

    def line(self) -> str:
        """The finding in one line, safe on a terminal: names and annotations in it were
        read from the cluster."""
        return state.printable(f"{self.message}; {self.pause}" if self.pause else self.message,
                               600)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _meta(obj: Obj) -> Obj:
    m = obj.get("metadata") if isinstance(obj, dict) else None
    return m if isinstance(m, dict) else {}


def keda_targets(scaled_object: Obj, deployment: str) -> bool:
    """True when this ScaledObject scales apps/v1 Deployment `deployment` (same namespace)."""
    spec = scaled_object.get("spec") if isinstance(scaled_object, dict) else None
    ref = spec.get("scaleTargetRef") if isinstance(spec, dict) else None
    if not isinstance(ref, dict) or _str(ref.get("name")) != deployment:
        return False
    kind = _str(ref.get("kind")) or "Deployment"
    api = _str(ref.get("apiVersion")) or "apps/v1"
    return kind == "Deployment" and api.split("/")[0] == "apps"


def keda_paused(scaled_object: Obj) -> bool:
    ann = _map(_meta(scaled_object).get("annotations"))
    return KEDA_PAUSED_REPLICAS in ann or ann.get(KEDA_PAUSED, "").lower() == "true"


def findings(deployment: Obj, scaled_objects: Iterable[Obj] = ()) -> list[Finding]:
    """What will fight a swap of `deployment` (one Finding each), in a stable order."""
    meta = _meta(deployment)
    name = _str(meta.get("name"))
    namespace = _str(meta.get("namespace")) or "default"
    labels = _map(meta.get("labels"))
    annotations = _map(meta.get("annotations"))
    out: list[Finding] = []

    for so in scaled_objects:
        if not keda_targets(so, name) or keda_paused(so):
            continue
        so_name = _str(_meta(so).get("name"))
        out.append(Finding(
            "KEDA", f"scaledobject/{so_name}",
            f"KEDA ScaledObject {so_name} scales deployment/{name} and will scale it back up "
            "during the session",
            f"pause it: kubectl -n {namespace} annotate scaledobject {so_name} "
            f"{KEDA_PAUSED_REPLICAS}=0 (remove the annotation afterwards)"))

    tracking = annotations.get(ARGO_TRACKING_ID, "")
    app = tracking.split(":", 1)[0] if ":" in tracking else ""
    if app:
        out.append(Finding(
            "Argo CD", f"application/{app}",
            f"deployment/{name} is managed by Argo CD application {app}: with self-heal it "
            "puts the replicas back",
            f"pause it: argocd app set {app} --sync-policy none (or ignoreDifferences on "
            "/spec/replicas)"))
    elif labels.get(ARGO_INSTANCE_LABEL) and labels.get("app.kubernetes.io/managed-by") != "Helm":
        app = labels[ARGO_INSTANCE_LABEL]
        out.append(Finding(
            "Argo CD", f"application/{app}",
            f"deployment/{name} may be managed by Argo CD application {app} (label "
            f"{ARGO_INSTANCE_LABEL}): with self-heal it puts the replicas back",
            f"if so, pause it: argocd app set {app} --sync-policy none", certain=False))

    for group, kind, cli in ((FLUX_KUSTOMIZE, "Kustomization", "kustomization"),
                             (FLUX_HELM, "HelmRelease", "helmrelease")):
        owner = labels.get(f"{group}/name")
        if not owner:
            continue
        owner_ns = labels.get(f"{group}/namespace") or namespace
        if group == FLUX_KUSTOMIZE and annotations.get(FLUX_RECONCILE) == "disabled":
            continue
        out.append(Finding(
            "Flux", f"{cli}/{owner}",
            f"deployment/{name} is applied by Flux {kind} {owner_ns}/{owner}, which reverts "
            "the replicas on its next reconcile",
            f"pause it: flux suspend {cli} {owner} -n {owner_ns} (flux resume afterwards)"))

    owners = meta.get("ownerReferences")
    for ref in owners if isinstance(owners, list) else []:
        if not isinstance(ref, dict) or ref.get("controller") is not True:
            continue
        kind, ref_name = _str(ref.get("kind")), _str(ref.get("name"))
        if kind and ref_name:
            out.append(Finding(
                "owner", f"{kind.lower()}/{ref_name}",
                f"deployment/{name} is controlled by {kind} {ref_name}, whose controller may "
                "restore its replicas",
                f"pause that controller, or scale through {kind} {ref_name}"))
    return out


def replicas_manager(deployment: Obj, ignore: Iterable[str] = ()) -> str:
    """The field manager that owns `spec.replicas` (from managedFields), bridge's own names
    ignored; "" when unknown. A `scale` subresource write is shown as "MANAGER (scale)"."""
    skip = set(ignore)
    managed = _meta(deployment).get("managedFields")
    best, best_time = "", ""
    for entry in managed if isinstance(managed, list) else []:
        if not isinstance(entry, dict):
            continue
        fields_v1 = entry.get("fieldsV1")
        spec = fields_v1.get("f:spec") if isinstance(fields_v1, dict) else None
        if not isinstance(spec, dict) or "f:replicas" not in spec:
            continue
        manager = _str(entry.get("manager"))[:100]
        if not manager or manager in skip:
            continue
        when = _str(entry.get("time"))
        if when >= best_time:
            sub = _str(entry.get("subresource"))
            best, best_time = (f"{manager} ({sub})" if sub else manager), when
    return best


@dataclass
class DriftWatch:
    """Watches the original Deployment during a session: its replicas should stay at 0."""

    expected: int = 0
    known: list[Finding] = field(default_factory=list)  # from `findings`, to name a cause
    own_managers: tuple[str, ...] = ("bridge",)
    warned: bool = False

    def observe(self, deployment: Obj) -> str | None:
        """A warning the first time the replicas are not what bridge set, else None."""
        spec = deployment.get("spec") if isinstance(deployment, dict) else None
        replicas = spec.get("replicas") if isinstance(spec, dict) else None
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            replicas = 1  # an absent replicas field means 1
        if replicas == self.expected or self.warned:
            return None
        self.warned = True
        name = _str(_meta(deployment).get("name"))
        manager = replicas_manager(deployment, self.own_managers)
        cause = f"set by {manager}" if manager else "by another client"
        line = (f"deployment/{name} was scaled to {replicas} during the session ({cause}); "
                "the original now takes traffic again alongside the laptop")
        sure = [f for f in self.known if f.certain] or self.known
        if sure:
            line += f"; likely {sure[0].controller}: {sure[0].pause}"
        return line
