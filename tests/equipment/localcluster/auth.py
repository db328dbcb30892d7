"""Authentication (bearer tokens, client certificates) and authorization of the test cluster.

Users: `admin` (token) and `admin-cert` (client certificate, group system:masters) may do
everything; `restricted` (token) may only get, list and watch; `bridge-user` (token) has exactly
the Role in bridge's README (`LEAST_PRIVILEGE_RULES`), in every namespace, as if bound there by a
RoleBinding. Denials are worded like Kubernetes' RBAC authorizer.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, forbidden

READ_VERBS = frozenset({"get", "list", "watch"})
ADMIN_GROUP = "system:masters"


# (apiGroups, resources, verbs) of the README's Role, rule by rule
Rule = tuple[frozenset[str], frozenset[str], frozenset[str]]


def _rule(groups: str, resources: str, verbs: str) -> Rule:
    return (frozenset(groups.split(",")), frozenset(resources.split(",")),
            frozenset(verbs.split(",")))


LEAST_PRIVILEGE_RULES: tuple[Rule, ...] = (
    _rule("apps", "deployments", "get,list,watch,create,patch,delete"),
    _rule("", "pods", "get,list,watch"),
    _rule("", "pods/log", "get"),
    _rule("", "pods/portforward", "get,create"),
    _rule("", "services", "get,list"),
    _rule("discovery.k8s.io", "endpointslices", "list,watch"),
    _rule("", "endpoints", "get"),
    _rule("apps", "replicasets", "get,list,patch"),
    _rule("", "limitranges", "list"),
    _rule("keda.sh", "scaledobjects", "list"),
)


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    read_only: bool = False
    rules: tuple[Rule, ...] | None = None  # namespaced rules only (a Role), when set


@dataclass
class Authenticator:
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    restricted_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    least_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def from_token(self, token: str) -> User | None:
        if hmac.compare_digest(token, self.admin_token):
            return User("admin", (ADMIN_GROUP, "system:authenticated"))
        if hmac.compare_digest(token, self.restricted_token):
            return User("restricted", ("system:authenticated",), read_only=True)
        if hmac.compare_digest(token, self.least_token):
            return User("bridge-user", ("system:authenticated",), rules=LEAST_PRIVILEGE_RULES)
        return None

    def authenticate(self, authorization: str | None, peercert: dict[str, Any] | None
                     ) -> User | None:
        """The user a request's (CA-verified) client certificate or bearer token names, or
        None. A verified certificate is tried first, then the token."""
        if peercert:
            user = user_from_cert(peercert)
            if user is not None:
                return user
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return self.from_token(token.strip())
        return None


def user_from_cert(peercert: dict[str, Any]) -> User | None:
    cn, orgs = None, []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    if not cn:
        return None
    return User(cn, (*orgs, "system:authenticated"), read_only=ADMIN_GROUP not in orgs)


UNAUTHORIZED = ApiError(401, "Unauthorized", "Unauthorized")


def authorize(user: User, verb: str, group: str, plural: str, subresource: str | None,
              namespace: str | None, name: str | None) -> None:
    """Raise 403 Forbidden, worded like Kubernetes, when `user` may not do `verb`."""
    resource = f"{plural}/{subresource}" if subresource else plural
    if user.rules is not None:
        if namespace and any(group in g and resource in r and verb in v
                             for g, r, v in user.rules):
            return
    elif not user.read_only or verb in READ_VERBS:
        return
    what = f"{plural}.{group}" if group else plural
    subject = f'{what} "{name}"' if name else what
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = (f'{subject} is forbidden: User "{user.name}" cannot {verb} resource '
               f'"{resource}" in API group "{group}" {scope}')
    raise forbidden(message, f"{group}/{plural}" if group else plural, name or "")


ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def access_review(user: User, review: Any) -> dict[str, Any]:
    """Answer a SelfSubjectAccessReview as Kubernetes does (the spec echoed, status.allowed);
    every authenticated user may ask about itself (system:basic-user)."""
    if not isinstance(review, dict) or not isinstance(review.get("spec"), dict):
        raise ApiError(400, "BadRequest", "SelfSubjectAccessReview: spec is required")
    spec = review["spec"]
    attrs = spec.get("resourceAttributes")
    allowed, reason = True, ""
    if isinstance(attrs, dict):
        try:
            authorize(user, str(attrs.get("verb") or ""), str(attrs.get("group") or ""),
                      str(attrs.get("resource") or ""), attrs.get("subresource") or None,
                      attrs.get("namespace") or None, attrs.get("name") or None)
        except ApiError:
            allowed = False
        else:
            reason = f'allowed: User "{user.name}"'
    elif not isinstance(spec.get("nonResourceAttributes"), dict):
        raise ApiError(400, "BadRequest", "SelfSubjectAccessReview: exactly one of "
                       "resourceAttributes or nonResourceAttributes is required")
    status: dict[str, Any] = {"allowed": allowed}
    if reason:
        status["reason"] = reason
    return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
