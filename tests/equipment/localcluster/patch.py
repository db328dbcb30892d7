"""The three patch formats of the Kubernetes API, as pure functions on JSON values.

- JSON merge patch (RFC 7386): maps merge, null deletes, lists replace.
- Strategic merge patch: like merge patch, but lists with a merge key (containers by name,
  container ports by containerPort, ...) merge element-wise; `$patch: delete|replace|merge`,
  `$retainKeys`, `$deleteFromPrimitiveList/<f>` and `$setElementOrder/<f>` are understood.
- JSON patch (RFC 6902): add/remove/replace/move/copy/test.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

JSON = Any

# Field name -> merge key, for lists Kubernetes declares `patchStrategy: merge`. The key
# depends on the parent for `ports` (container ports vs. service ports).
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists of primitives merged as sets.
_MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})


def _merge_key(field: str, parent_path: tuple[str, ...]) -> str | None:
    if field == "ports":
        # Service ports (spec.ports) merge by port; container ports by containerPort.
        in_container = any(p in ("containers", "initContainers", "ephemeralContainers")
                           for p in parent_path)
        return "containerPort" if in_container else "port"
    return _MERGE_KEYS.get(field)


def merge_patch(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: JSON, patch: JSON) -> JSON:
    return _smp_map(target if isinstance(target, dict) else {}, patch, ())


def _smp_map(target: dict[str, Any], patch: JSON, path: tuple[str, ...]) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge"):
        raise bad_request(f"Unknown patch type: {directive!r}")
    result = copy.deepcopy(target)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            existing = result.get(key)
            sub = _smp_map(existing if isinstance(existing, dict) else {}, value,
                           path + (key,))
            if sub is None:
                result.pop(key, None)
            else:
                result[key] = sub
        elif isinstance(value, list):
            result[key] = _smp_list(result.get(key), value, key, path)
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(target: JSON, patch: list[Any], field: str, path: tuple[str, ...]) -> JSON:
    current = target if isinstance(target, list) else []
    if field in _MERGED_PRIMITIVE_LISTS:
        merged = list(current)
        merged += [x for x in patch if x not in merged]
        return merged
    key = _merge_key(field, path)
    if key is None:
        if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
            return [x for x in patch if not (isinstance(x, dict) and "$patch" in x)]
        return copy.deepcopy(patch)
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [copy.deepcopy(x) for x in patch if not (isinstance(x, dict) and "$patch" in x)]
    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise bad_request(f"map: {item!r} does not contain declared merge key: {key}")
        index = next((i for i, x in enumerate(result)
                      if isinstance(x, dict) and x.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_smp_map({}, item, path + (field,)))
        else:
            result[index] = _smp_map(result[index], item, path + (field,))
    return result


# -- JSON patch ----------------------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f'the server rejected our request due to an error in our request: '
                          f'invalid JSON pointer "{path}"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _has(node: JSON, key: str) -> bool:
    """Whether `node` is an object with member `key` or an array with index `key`."""
    return ((isinstance(node, dict) and key in node)
            or (isinstance(node, list) and key.isdigit() and int(key) < len(node)))


def _at(node: JSON, key: str) -> JSON:
    """The member or element `key` of `node` (which `_has`)."""
    return node[key] if isinstance(node, dict) else node[int(key)]


def _missing(op: str, path: str) -> ApiError:
    return _patch_error(f'{op} operation does not apply: doc is missing path: "{path}"')


def _parent(doc: JSON, parts: list[str], op: str, path: str) -> tuple[JSON, str]:
    node = doc
    for part in parts[:-1]:
        if not _has(node, part):
            raise _missing(op, path)
        node = _at(node, part)
    return node, parts[-1]


def _patch_error(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def _get(doc: JSON, path: str, op: str) -> JSON:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, op, path)
    if _has(parent, last):
        return _at(parent, last)
    raise _missing(op, path)


def _add(doc: JSON, path: str, value: JSON, op: str = "add") -> JSON:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent, last = _parent(doc, parts, op, path)
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), copy.deepcopy(value))
        else:
            raise _missing(op, path)
    else:
        raise _missing(op, path)
    return doc


def _remove(doc: JSON, path: str, op: str = "remove") -> JSON:
    parts = _pointer(path)
    parent, last = _parent(doc, parts, op, path)
    if not _has(parent, last):
        raise _missing(op, path)
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc


def json_patch(target: JSON, operations: JSON) -> JSON:
    if not isinstance(operations, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, op.get("value"))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path, "replace")
            doc = _remove(doc, path, "replace") if _pointer(path) else doc
            doc = _add(doc, path, op.get("value"), "replace")
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_get(doc, op.get("from", ""), kind))
            if kind == "move":
                doc = _remove(doc, op["from"], kind)
            doc = _add(doc, path, value, kind)
        elif kind == "test":
            if _get(doc, path, "test") != op.get("value"):
                raise _patch_error(f'testing value {path} failed: test failed')
        else:
            raise bad_request(f'Unexpected kind: {kind}')
    return doc


MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSONPATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
SUPPORTED = (JSONPATCH, MERGE, STRATEGIC)


def apply_patch(content_type: str, target: JSON, patch: JSON) -> JSON:
    if content_type == MERGE:
        return merge_patch(target, patch)
    if content_type == STRATEGIC:
        return strategic_merge_patch(target, patch)
    if content_type == JSONPATCH:
        return json_patch(target, patch)
    raise ApiError(415, "UnsupportedMediaType",
                   f'the body of the request was in an unknown format - accepted media types '
                   f'include: {", ".join(SUPPORTED)}')
