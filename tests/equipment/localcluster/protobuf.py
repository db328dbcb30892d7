"""Decoding of `application/vnd.kubernetes.protobuf` request bodies into JSON objects.

kubectl's typed clients (`kubectl create namespace|configmap|secret|deployment|service`,
`kubectl run`, `kubectl expose`) send built-in objects as protobuf, with no JSON fallback. The
test cluster answers in JSON (they accept it) and decodes the bodies with the field numbers
below: the subset of the Kubernetes API's generated.proto those commands fill. Fields sent
empty (proto2 emits every non-pointer field) are skipped; a non-empty field we do not know is
refused with 415, never silently dropped.
"""

from __future__ import annotations

import base64
from typing import Any

from .errors import ApiError

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

# Field kinds: "str", "int", "bool", "bytes" (base64 in JSON), "map" (string->string),
# "bmap" (string->bytes), "intstr", "qmap" (string->Quantity), "skip" (read-only, e.g.
# status), "raw" (bytes kept as they are), or a message name. A trailing "*" marks repeated
# fields; a leading "0" marks pointer fields whose zero value is meaningful.
Field = tuple[str, str]
SCHEMAS: dict[str, dict[int, Field]] = {
    "TypeMeta": {1: ("apiVersion", "str"), 2: ("kind", "str")},
    "Unknown": {1: ("typeMeta", "TypeMeta"), 2: ("raw", "raw"), 3: ("contentEncoding", "str"),
                4: ("contentType", "str")},
    "ObjectMeta": {
        1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"),
        4: ("selfLink", "skip"), 5: ("uid", "skip"), 6: ("resourceVersion", "str"),
        7: ("generation", "skip"), 8: ("creationTimestamp", "skip"),
        9: ("deletionTimestamp", "skip"), 10: ("deletionGracePeriodSeconds", "skip"),
        11: ("labels", "map"), 12: ("annotations", "map"),
        13: ("ownerReferences", "OwnerReference*"), 14: ("finalizers", "str*"),
        17: ("managedFields", "skip"),
    },
    "OwnerReference": {1: ("kind", "str"), 3: ("name", "str"), 4: ("uid", "str"),
                       5: ("apiVersion", "str"), 6: ("controller", "0bool"),
                       7: ("blockOwnerDeletion", "0bool")},
    "LabelSelector": {1: ("matchLabels", "map"),
                      2: ("matchExpressions", "LabelSelectorRequirement*")},
    "LabelSelectorRequirement": {1: ("key", "str"), 2: ("operator", "str"),
                                 3: ("values", "str*")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"),
                  3: ("status", "skip")},
    "NamespaceSpec": {1: ("finalizers", "str*")},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map"), 3: ("binaryData", "bmap"),
                  4: ("immutable", "0bool")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "bmap"), 3: ("type", "str"),
               4: ("stringData", "map"), 5: ("immutable", "0bool")},
    "Deployment": {1: ("metadata", "ObjectMeta"), 2: ("spec", "DeploymentSpec"),
                   3: ("status", "skip")},
    "DeploymentSpec": {1: ("replicas", "0int"), 2: ("selector", "LabelSelector"),
                       3: ("template", "PodTemplateSpec"), 4: ("strategy", "DeploymentStrategy"),
                       5: ("minReadySeconds", "int"), 6: ("revisionHistoryLimit", "0int"),
                       7: ("paused", "bool"), 9: ("progressDeadlineSeconds", "0int")},
    "DeploymentStrategy": {1: ("type", "str"), 2: ("rollingUpdate", "RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "intstr"), 2: ("maxSurge", "intstr")},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodSpec")},
    "Pod": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodSpec"), 3: ("status", "skip")},
    "PodSpec": {1: ("volumes", "Volume*"), 2: ("containers", "Container*"),
                3: ("restartPolicy", "str"), 4: ("terminationGracePeriodSeconds", "0int"),
                5: ("activeDeadlineSeconds", "0int"), 6: ("dnsPolicy", "str"),
                7: ("nodeSelector", "map"), 8: ("serviceAccountName", "str"),
                9: ("serviceAccount", "str"), 10: ("nodeName", "str"),
                14: ("securityContext", "PodSecurityContext"), 16: ("hostname", "str"),
                17: ("subdomain", "str"), 19: ("schedulerName", "str"),
                20: ("initContainers", "Container*")},
    "PodSecurityContext": {},
    "Volume": {1: ("name", "str")},
    "Container": {1: ("name", "str"), 2: ("image", "str"), 3: ("command", "str*"),
                  4: ("args", "str*"), 5: ("workingDir", "str"), 6: ("ports", "ContainerPort*"),
                  7: ("env", "EnvVar*"), 8: ("resources", "ResourceRequirements"),
                  13: ("terminationMessagePath", "str"), 14: ("imagePullPolicy", "str"),
                  16: ("stdin", "bool"), 17: ("stdinOnce", "bool"), 18: ("tty", "bool"),
                  20: ("terminationMessagePolicy", "str")},
    "ContainerPort": {1: ("name", "str"), 2: ("hostPort", "int"), 3: ("containerPort", "int"),
                      4: ("protocol", "str"), 5: ("hostIP", "str")},
    "EnvVar": {1: ("name", "str"), 2: ("value", "str")},
    "ResourceRequirements": {1: ("limits", "qmap"), 2: ("requests", "qmap")},
    "Service": {1: ("metadata", "ObjectMeta"), 2: ("spec", "ServiceSpec"),
                3: ("status", "skip")},
    "ServiceSpec": {1: ("ports", "ServicePort*"), 2: ("selector", "map"),
                    3: ("clusterIP", "str"), 4: ("type", "str"), 5: ("externalIPs", "str*"),
                    7: ("sessionAffinity", "str"), 10: ("externalName", "str")},
    "ServicePort": {1: ("name", "str"), 2: ("protocol", "str"), 3: ("port", "int"),
                    4: ("targetPort", "intstr"), 5: ("nodePort", "int")},
    # authorization.k8s.io/v1, for `kubectl auth can-i`
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta"),
                                2: ("spec", "SelfSubjectAccessReviewSpec"), 3: ("status", "skip")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes"),
                                    2: ("nonResourceAttributes", "NonResourceAttributes")},
    "ResourceAttributes": {1: ("namespace", "str"), 2: ("verb", "str"), 3: ("group", "str"),
                           4: ("version", "str"), 5: ("resource", "str"),
                           6: ("subresource", "str"), 7: ("name", "str")},
    "NonResourceAttributes": {1: ("path", "str"), 2: ("verb", "str")},
}
KINDS = frozenset({"Namespace", "ConfigMap", "Secret", "Deployment", "Pod", "Service",
                   "SelfSubjectAccessReview"})


def unsupported(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"the test cluster cannot decode this protobuf body ({message}); nothing "
                    "was changed - send JSON instead (e.g. kubectl create -f FILE)")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def varint(self) -> int:
        shift = result = 0
        while True:
            if self.pos >= len(self.data):
                raise unsupported("truncated varint")
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def fields(self) -> list[tuple[int, int, Any]]:
        out = []
        while self.pos < len(self.data):
            key = self.varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                value: Any = self.varint()
            elif wire == 2:
                length = self.varint()
                value = self.data[self.pos:self.pos + length]
                if len(value) != length:
                    raise unsupported("truncated field")
                self.pos += length
            elif wire == 1:
                value, self.pos = self.data[self.pos:self.pos + 8], self.pos + 8
            elif wire == 5:
                value, self.pos = self.data[self.pos:self.pos + 4], self.pos + 4
            else:
                raise unsupported(f"wire type {wire}")
            out.append((number, wire, value))
        return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _entries(raw: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for number, _, v in _Reader(raw).fields():
        if number == 1:
            key = v.decode()
        elif number == 2:
            value = v
    return key, value


def _scalar(kind: str, wire: int, value: Any, where: str) -> Any:
    if kind == "raw":
        return value
    if kind == "str":
        return value.decode()
    if kind in ("int", "bool"):
        if wire != 0:
            raise unsupported(f"{where}: unexpected wire type")
        return bool(value) if kind == "bool" else _signed(value)
    if kind == "bytes":
        return base64.b64encode(value).decode()
    if kind == "intstr":
        fields = {n: v for n, _, v in _Reader(value).fields()}
        if fields.get(1, 0) == 1:
            return fields.get(3, b"").decode()
        return _signed(fields.get(2, 0))
    return decode_message(kind, value, where)


def _is_empty(wire: int, value: Any) -> bool:
    return (wire == 0 and value == 0) or (wire == 2 and len(value) == 0)


def decode_message(name: str, data: bytes, where: str = "") -> dict[str, Any]:
    schema = SCHEMAS[name]
    out: dict[str, Any] = {}
    for number, wire, value in _Reader(data).fields():
        field = schema.get(number)
        if field is None:
            if _is_empty(wire, value):
                continue
            raise unsupported(f"field {number} of {name} at {where or 'top'}")
        key, kind = field
        here = f"{where}.{key}" if where else key
        repeated, keep_zero = kind.endswith("*"), kind.startswith("0")
        kind = kind.rstrip("*").lstrip("0")
        if kind == "skip":
            continue
        if kind in ("map", "bmap", "qmap"):
            k, v = _entries(value)
            if kind == "map":
                item: Any = v.decode()
            elif kind == "bmap":
                item = base64.b64encode(v).decode()
            else:  # resource.Quantity{string = 1}
                item = next((x.decode() for n, _, x in _Reader(v).fields() if n == 1), "")
            out.setdefault(key, {})[k] = item
            continue
        decoded = _scalar(kind, wire, value, here)
        if repeated:
            out.setdefault(key, []).append(decoded)
        elif decoded in ("", 0, False) and not keep_zero and kind in ("str", "int", "bool"):
            continue  # proto2 sends unset non-pointer fields as zero values
        else:
            out[key] = decoded
    return out


def decode(body: bytes) -> dict[str, Any]:
    """A `k8s\\0`-prefixed runtime.Unknown envelope as the JSON object it carries."""
    if not body.startswith(MAGIC):
        raise unsupported("missing the k8s protobuf envelope")
    envelope = decode_message("Unknown", body[len(MAGIC):])
    type_meta = envelope.get("typeMeta") or {}
    kind = type_meta.get("kind", "")
    if kind not in KINDS:
        raise unsupported(f"kind {kind or '(none)'}")
    if envelope.get("contentEncoding"):
        raise unsupported(f"content encoding {envelope['contentEncoding']}")
    obj = decode_message(kind, envelope.get("raw", b""))
    obj["apiVersion"], obj["kind"] = type_meta.get("apiVersion", ""), kind
    return obj
