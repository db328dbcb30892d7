"""`bridge doctor [TARGET]`: can this user swap here, and what would get in the way?

Asks the API server (SelfSubjectAccessReview) for every permission bridge uses, reads the
cluster version, and for a TARGET also what would fight the swap (bridge.model.controllers) and
whether the sidecar image is already on a node (when nodes may be listed). Prints one line
per finding; changes nothing. The permission table below is the one the README's Role grants.

The pure part (`NEEDS`, `review`, `lines`) is separate from the asking (`examine`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BridgeError
from bridge.kube import credentials
from bridge.model import controllers

Obj = dict[str, Any]
REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
# From 1.35 a websocket upgrade (the port-forward) also needs `create`
# (feature AuthorizePodWebsocketUpgradeCreatePermission, on by default).
UPGRADE_CREATE_MINOR = 35


@dataclass(frozen=True)
class Need:
    verb: str
    resource: str
    why: str
    group: str = ""
    subresource: str = ""
    required: bool = True
    from_minor: int = 0  # needed only from this Kubernetes minor version on

    @property
    def what(self) -> str:
        res = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {res}/{self.subresource}" if self.subresource else \
            f"{self.verb} {res}"


NEEDS: tuple[Need, ...] = (
    Need("get", "deployments", "to read the target and its lock", "apps"),
    Need("list", "deployments", "for bridge status and restore --all", "apps"),
    Need("create", "deployments", "to start the proxy", "apps"),
    Need("patch", "deployments", "to take the lock and scale the original", "apps"),
    Need("delete", "deployments", "to remove the proxy", "apps"),
    Need("get", "pods", "to follow the proxy pod"),
    Need("list", "pods", "to find the proxy pod"),
    Need("get", "pods", "to read the sidecar's host key", subresource="log"),
    Need("get", "pods", "to open the tunnel (websocket port-forward)", subresource="portforward"),
    Need("create", "pods", "to open the tunnel (Kubernetes 1.35+)", subresource="portforward",
         from_minor=UPGRADE_CREATE_MINOR),
    Need("get", "services", "to resolve svc/NAME targets"),
    Need("list", "services", "to find the Services that select the pods"),
    Need("list", "endpointslices", "to see when traffic moved", "discovery.k8s.io",
         required=False),
    Need("watch", "endpointslices", "to see at once (not polled) when traffic moved",
         "discovery.k8s.io", required=False),
    Need("get", "endpoints", "to see when traffic moved (older clusters)", required=False),
    Need("get", "replicasets", "to prove the proxy pod's owner chain", "apps"),
    Need("list", "replicasets", "to say why the proxy pod cannot be created, and to find the "
         "lock's copies on the original's ReplicaSets", "apps", required=False),
    Need("patch", "replicasets", "to remove the lock's copies from the original's ReplicaSets "
         "at restore", "apps", required=False),
    Need("list", "limitranges", "to fit the sidecar's resources", required=False),
    Need("list", "scaledobjects", "to warn about KEDA scaling the original back", "keda.sh",
         required=False),
)


def review(need: Need, namespace: str, name: str = "") -> Obj:
    """The SelfSubjectAccessReview asking for `need` in `namespace`."""
    attrs: Obj = {"namespace": namespace, "verb": need.verb, "group": need.group,
                  "resource": need.resource}
    if need.subresource:
        attrs["subresource"] = need.subresource
    if name:
        attrs["name"] = name
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}}


def minor_version(version: Obj) -> int | None:
    """The minor version from /version ("35", "35+" on EKS/GKE), or None."""
    m = re.match(r"\d+", str(version.get("minor") or ""))
    return int(m.group()) if m else None


def applies(need: Need, minor: int | None) -> bool:
    """Whether `need` holds on this version (unknown: assume the newest rules)."""
    return minor is None or minor >= need.from_minor


@dataclass
class Report:
    context: str
    namespace: str
    version: str = ""
    minor: int | None = None
    allowed: dict[Need, bool] = field(default_factory=dict)
    unchecked: str = ""  # why the permissions could not be checked
    findings: list[controllers.Finding] = field(default_factory=list)
    image: str = ""
    image_note: str = ""
    target_note: str = ""
    credentials_note: str = ""
    unreachable: str = ""  # the API server could not be reached at all (why, one line)

    @property
    def ok(self) -> bool:
        return not self.unreachable and not self.unchecked and not self.missing(required=True)

    def missing(self, *, required: bool) -> list[Need]:
        return [n for n, ok in self.allowed.items()
                if not ok and n.required == required and applies(n, self.minor)]


def lines(report: Report) -> list[str]:
    """What `bridge doctor` prints: one line per fact, missing things first."""
    if report.unreachable:  # nothing else could be asked: one line, not a wrong diagnosis
        return [f"unreachable: {report.unreachable}"]
    out = [f"cluster: Kubernetes {report.version or 'version unknown'} "
           f"(context {report.context}, namespace {report.namespace})"]
    if report.credentials_note:
        out.append(f"credentials: {report.credentials_note}")
    if report.unchecked:
        out.append(f"permissions: cannot check: {report.unchecked}")
    else:
        for n in report.missing(required=True):
            out.append(f"missing: {n.what} in namespace {report.namespace} ({n.why})")
        for n in report.missing(required=False):
            out.append(f"optional, missing: {n.what} in namespace {report.namespace} "
                       f"({n.why})")
        checked = [n for n in report.allowed if applies(n, report.minor)]
        if not report.missing(required=True):
            out.append(f"permissions: all {sum(n.required for n in checked)} required "
                       "permissions granted")
    if report.target_note:
        out.append(report.target_note)
    for f in report.findings:
        out.append(f"warning: {f.line()}")
    if report.image_note:
        out.append(f"sidecar image {report.image}: {report.image_note}")
    return out


def image_on_nodes(nodes: Iterable[Obj], image: str) -> bool:
    """Whether any node reports `image` among its cached images (status.images)."""
    for node in nodes:
        images = (node.get("status") or {}).get("images") if isinstance(node, dict) else None
        for entry in images if isinstance(images, list) else []:
            names = entry.get("names") if isinstance(entry, dict) else None
            if isinstance(names, list) and image in names:
                return True
    return False


async def examine(kube: Any, target: str | None = None, image: str = "") -> Report:
    """Ask the cluster (read-only: access reviews and gets) and build the Report."""
    from bridge.kube.client import ApiError, Unreachable

    report = Report(kube.context, kube.namespace, image=image)
    report.credentials_note = credentials_note(kube.api_client.configuration)
    try:
        version = await kube.request("GET", "/version")
        report.version = str(version.get("gitVersion") or "")
        report.minor = minor_version(version)
    except Unreachable as e:
        if e.permanent:  # refused, no such name, TLS, a full timeout: nothing more to ask
            report.unreachable = str(e)
            return report
        report.version = f"unknown ({e})"
    except ApiError as e:
        report.version = f"unknown ({e})"
    for need in NEEDS:
        if not applies(need, report.minor):
            continue
        try:
            answer = await kube.request("POST", REVIEW_PATH, body=review(need, kube.namespace))
        except Unreachable as e:
            report.unchecked = f"the API server did not answer a SelfSubjectAccessReview ({e})"
            break
        except ApiError as e:
            report.unchecked = (f"the server refused a SelfSubjectAccessReview ({e}); "
                                "ask your administrator for the Role in bridge's README")
            break
        status = answer.get("status") if isinstance(answer, dict) else None
        report.allowed[need] = isinstance(status, dict) and status.get("allowed") is True
    if target:
        await _examine_target(kube, report, target)
    if image:
        try:
            nodes = await kube.request("GET", "/api/v1/nodes")
            present = image_on_nodes(nodes.get("items") or [], image)
            report.image_note = ("already on a node" if present else
                                 "on no node yet: the first swap pulls it (make sure the nodes "
                                 "can reach its registry)")
        except ApiError:
            report.image_note = ""  # nodes may not be listed: nothing to tell
    return report


def credentials_note(configuration: Any) -> str:
    """What bridge knows about an exec plugin's token (renewed before it expires)."""
    source = credentials.installed(configuration)
    if source is None or source.credential is None:
        return ""
    expires = source.credential.expires
    when = "does not expire" if expires is None else \
        f"valid until {expires.strftime('%H:%M:%S')} UTC; {source.renewal}"
    return f"token from {source.origin}, {when}"


async def _examine_target(kube: Any, report: Report, target: str) -> None:
    from bridge.kube.client import ApiError
    from bridge.swap.resolve import resolve_target

    try:
        deployment, _services = await resolve_target(kube, target)
    except BridgeError as e:
        report.target_note = f"target: {e}"
        return
    name = str(deployment.get("metadata", {}).get("name"))
    scaled: list[Obj] = []
    try:
        r = await kube.request(
            "GET", f"/apis/keda.sh/v1alpha1/namespaces/{kube.namespace}/scaledobjects")
        scaled = list(r.get("items") or [])
    except ApiError:
        pass  # KEDA not installed (404) or not allowed (403)
    report.findings = controllers.findings(deployment, scaled)
    replicas = deployment.get("spec", {}).get("replicas")
    report.target_note = f"target: deployment/{name} ({replicas} replicas)"
