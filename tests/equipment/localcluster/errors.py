"""Kubernetes-style API errors, carried as exceptions and rendered as Status objects."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """An error the API server answers with a `Status` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(resource: str, name: str) -> dict[str, Any]:
    group, _, plural = resource.rpartition("/")
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return details


def qualified(resource: str) -> str:
    """`apps/deployments` -> `deployments.apps`; `pods` -> `pods` (as Kubernetes words it)."""
    group, _, plural = resource.rpartition("/")
    return f"{plural}.{group}" if group else plural


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(resource)} "{name}" not found',
                    _details(resource, name))


def already_exists(resource: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified(resource)} "{name}" already exists',
                    _details(resource, name))


def conflict(resource: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(resource)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        _details(resource, name),
    )


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, name: str, causes: list[dict[str, Any]]) -> ApiError:
    """422 Invalid. `kind` as Kubernetes words it (`Pod`, `Deployment.apps`); `causes` like
    [{"type": "Invalid", "field": "metadata.name", "value": "Bad", "detail": "..."}] with type
    one of Invalid, Required, Forbidden, Duplicate, NotSupported."""
    reasons = {"Invalid": "FieldValueInvalid", "Required": "FieldValueRequired",
               "Forbidden": "FieldValueForbidden", "Duplicate": "FieldValueDuplicate",
               "NotSupported": "FieldValueNotSupported"}
    words = {"Invalid": "Invalid value", "Required": "Required value", "Forbidden": "Forbidden",
             "Duplicate": "Duplicate value", "NotSupported": "Unsupported value"}
    texts, out = [], []
    for c in causes:
        kind_of = c.get("type", "Invalid")
        text = f"{c['field']}: {words[kind_of]}"
        if kind_of in ("Invalid", "Duplicate", "NotSupported") and "value" in c:
            text += f": {json.dumps(c['value'])}"
        if c.get("detail"):
            text += f": {c['detail']}"
        texts.append(text)
        message = text[len(c["field"]) + 2:]
        out.append({"reason": reasons[kind_of], "message": message, "field": c["field"]})
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    group = kind.partition(".")[2]
    details: dict[str, Any] = {"name": name, "kind": kind.partition(".")[0], "causes": out}
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', details)


def forbidden(message: str, resource: str = "", name: str = "") -> ApiError:
    details: dict[str, Any] | None = _details(resource, name) if resource else None
    return ApiError(403, "Forbidden", message, details)


def method_not_allowed(message: str = "the server does not allow this method on the requested "
                       "resource") -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)
