"""The resource types the test cluster serves, and the discovery documents describing them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIT_VERSION = "v1.37.0"


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The store key: `pods`, `apps/deployments`."""
        return f"{self.group}/{self.plural}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_kind(self) -> str:
        """As Kubernetes names the kind in error messages: `Pod`, `Deployment.apps`."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "Namespace", "namespaces", "namespace", False, ("ns",), ("status",)),
    Resource("", "v1", "Pod", "pods", "pod", True, ("po",),
             ("status", "log", "portforward"), ("all",)),
    Resource("", "v1", "Service", "services", "service", True, ("svc",), ("status",), ("all",)),
    Resource("", "v1", "Endpoints", "endpoints", "endpoints", True, ("ep",)),
    Resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", True),
    Resource("", "v1", "Event", "events", "event", True, ("ev",)),
    Resource("", "v1", "ConfigMap", "configmaps", "configmap", True, ("cm",)),
    Resource("", "v1", "Secret", "secrets", "secret", True),
    Resource("apps", "v1", "Deployment", "deployments", "deployment", True, ("deploy",),
             ("status", "scale"), ("all",)),
    Resource("apps", "v1", "ReplicaSet", "replicasets", "replicaset", True, ("rs",),
             ("status", "scale"), ("all",)),
)

BY_KEY = {r.key: r for r in RESOURCES}


def lookup(group: str, version: str, plural: str) -> Resource | None:
    for r in RESOURCES:
        if r.group == group and r.version == version and r.plural == plural:
            return r
    return None


def group_versions() -> dict[str, str]:
    """Group name -> its (single) version, for the named groups."""
    return {r.group: r.version for r in RESOURCES if r.group}


def version_info() -> dict[str, Any]:
    return {
        "major": "1", "minor": "37", "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                        "serverAddress": server_address}],
    }


def api_group_list() -> dict[str, Any]:
    groups = []
    for group, version in group_versions().items():
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> dict[str, Any] | None:
    version = group_versions().get(group)
    if version is None:
        return None
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv],
            "preferredVersion": gv}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    members = [r for r in RESOURCES if r.group == group and r.version == version]
    if not members:
        return None
    entries: list[dict[str, Any]] = []
    for r in members:
        entry: dict[str, Any] = {
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS if r.plural != "namespaces" else
            [v for v in VERBS if v != "deletecollection"],
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        entries.append(entry)
        for sub in r.subresources:
            sub_entry: dict[str, Any] = {"name": f"{r.plural}/{sub}", "singularName": "",
                                         "namespaced": r.namespaced, "kind": r.kind,
                                         "verbs": ["get", "patch", "update"]}
            if sub == "scale":
                sub_entry.update(group="autoscaling", version="v1", kind="Scale")
            elif sub == "log":
                sub_entry.update(kind="Pod", verbs=["get"])
            elif sub == "portforward":
                sub_entry.update(kind="PodPortForwardOptions", verbs=["create", "get"])
            entries.append(sub_entry)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": entries}


# -- OpenAPI v3 ----------------------------------------------------------------------------
# Only what kubectl reads to decide that the server validates fields itself (the PATCH
# operations' `fieldValidation` parameter); no schemas.

def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_root() -> dict[str, Any]:
    gvs = sorted({(r.group, r.version) for r in RESOURCES})
    return {"paths": {
        _gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash={GIT_VERSION}"}
        for g, v in gvs}}


def openapi_v3_document(path: str) -> dict[str, Any] | None:
    members = [r for r in RESOURCES if _gv_path(r.group, r.version) == path]
    if not members:
        return None
    params = [{"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
              for name in ("dryRun", "fieldManager", "fieldValidation", "force")]
    paths: dict[str, Any] = {}
    for r in members:
        prefix = f"/{path}/namespaces/{{namespace}}" if r.namespaced else f"/{path}"
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        paths[f"{prefix}/{r.plural}/{{name}}"] = {
            "patch": {"operationId": f"patch{r.kind}", "parameters": params,
                      "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
                      "responses": {"200": {"description": "OK"}}},
        }
        paths[f"{prefix}/{r.plural}"] = {
            "post": {"operationId": f"create{r.kind}", "parameters": params,
                     "x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk,
                     "responses": {"201": {"description": "Created"}}},
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": GIT_VERSION},
            "paths": paths, "components": {"schemas": {}}}
