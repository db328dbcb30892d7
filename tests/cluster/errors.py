"""Kubernetes-style API errors, carried as exceptions and rendered as Status objects."""

from __future__ import annotations

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


def invalid(resource: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """422 Invalid, `causes` like [{"field": "metadata.name", "message": "..."}]."""
    text = "; ".join(f"{c['field']}: Invalid value: {c.get('value', '')!r}: {c['message']}"
                     for c in causes)
    details = _details(resource, name)
    details["causes"] = [
        {"reason": "FieldValueInvalid", "message": c["message"], "field": c["field"]}
        for c in causes
    ]
    kind = resource.rpartition("/")[2]
    kind_word = kind[:-1].capitalize() if kind.endswith("s") else kind
    return ApiError(422, "Invalid", f'{kind_word} "{name}" is invalid: {text}', details)
