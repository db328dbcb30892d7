"""Label and field selectors: parsing the query-string forms and matching objects (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

Obj = dict[str, Any]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" also match objects without the label, as in Kubernetes.
        return not present or labels[self.key] not in self.values


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _check_key(key: str, selector: str) -> str:
    if not re.fullmatch(_KEY, key):
        raise bad_request(f'unable to parse requirement: invalid label key "{key}" '
                          f"in selector {selector!r}")
    return key


def _check_value(value: str, selector: str) -> str:
    if not re.fullmatch(_VALUE, value) or len(value) > 63:
        raise bad_request(f'unable to parse requirement: invalid label value: "{value}" '
                          f"in selector {selector!r}")
    return value


def parse_label_selector(text: str) -> list[Requirement]:
    reqs: list[Requirement] = []
    for part in _split_top(text):
        m = re.fullmatch(r"(\S+?)\s+(in|notin)\s+\((.*)\)", part)
        if m:
            values = tuple(_check_value(v.strip(), text) for v in m.group(3).split(",")
                           if v.strip() or len(m.group(3).split(",")) == 1)
            reqs.append(Requirement(_check_key(m.group(1), text), m.group(2), values))
            continue
        m = re.fullmatch(r"(.+?)\s*(==|!=|=)\s*(.*)", part)
        if m:
            op = "!=" if m.group(2) == "!=" else "="
            key = _check_key(m.group(1).strip(), text)
            reqs.append(Requirement(key, op, (_check_value(m.group(3).strip(), text),)))
            continue
        if part.startswith("!"):
            reqs.append(Requirement(_check_key(part[1:].strip(), text), "!"))
            continue
        if re.fullmatch(_KEY, part):
            reqs.append(Requirement(part, "exists"))
            continue
        raise bad_request(f"unable to parse requirement: found '{part}', expected: "
                          f"'=', '!=', '==', 'in', notin' in selector {text!r}")
    return reqs


def selector_from_label_selector(sel: dict[str, Any] | None) -> list[Requirement] | None:
    """A metav1.LabelSelector (matchLabels/matchExpressions) as requirements; None: nothing."""
    if sel is None:
        return None
    reqs = [Requirement(k, "=", (str(v),)) for k, v in (sel.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in sel.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise bad_request(f"{expr.get('operator')!r} is not a valid label selector operator")
        reqs.append(Requirement(expr["key"], op, tuple(expr.get("values") or ())))
    return reqs


def labels_match(reqs: list[Requirement], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


def format_selector(reqs: list[Requirement]) -> str:
    """Requirements in the string form (e.g. for Scale.status.selector)."""
    out = []
    for r in reqs:
        if r.op in ("=", "!="):
            out.append(f"{r.key}{r.op}{r.values[0]}")
        elif r.op in ("in", "notin"):
            out.append(f"{r.key} {r.op} ({','.join(r.values)})")
        elif r.op == "exists":
            out.append(r.key)
        else:
            out.append(f"!{r.key}")
    return ",".join(out)


# -- field selectors -----------------------------------------------------------------------


def _field(obj: Obj, path: str) -> Any:
    """The value of a supported field path: `outer.inner` ("" where absent), or a top-level
    field (`type`, `reason`) as text."""
    outer, _, inner = path.partition(".")
    if not inner:
        return str(obj.get(outer, ""))
    return obj.get(outer, {}).get(inner, "")


_GENERIC_FIELDS = ("metadata.name", "metadata.namespace")
_EXTRA_FIELDS = {
    "pods": ("spec.nodeName", "status.phase", "spec.restartPolicy", "status.podIP"),
    "secrets": ("type",),
    "services": ("spec.clusterIP", "spec.type"),
    "namespaces": ("status.phase",),
    "events": ("involvedObject.kind", "involvedObject.name", "involvedObject.namespace",
               "involvedObject.uid", "reason", "type"),
}


def parse_field_selector(text: str, resource: str) -> Callable[[Obj], bool]:
    allowed = _GENERIC_FIELDS + _EXTRA_FIELDS.get(resource, ())
    checks: list[tuple[str, bool, str]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"([^=!]+?)\s*(==|!=|=)\s*(.*)", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if field not in allowed:
            raise bad_request(f'field label not supported: {field}')
        checks.append((field, op != "!=", value))

    def predicate(obj: Obj) -> bool:
        return all((_field(obj, f) == v) == eq for f, eq, v in checks)

    return predicate


def predicate_for(label_selector: str | None, field_selector: str | None, resource: str
                  ) -> Callable[[Obj], bool]:
    """One predicate for a request's labelSelector and fieldSelector (either may be empty)."""
    reqs = parse_label_selector(label_selector) if label_selector else []
    fields = parse_field_selector(field_selector, resource) if field_selector else None

    def predicate(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        if reqs and not labels_match(reqs, labels):
            return False
        return fields is None or fields(obj)

    return predicate
