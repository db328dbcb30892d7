"""A mutating admission webhook for the real cluster (test equipment): the mesh-like injector
of tests/equipment/localcluster/admission.py served over TLS as AdmissionReview v1 with a
JSONPatch, and a MutatingWebhookConfiguration that sends it the pods created in ONE namespace
(selected by its kubernetes.io/metadata.name label, so a shared cluster's other namespaces never
see it).

The API server runs on this machine's network: the webhook listens on 127.0.0.1 with a
certificate for that address, signed by a CA made here and given as the caBundle.
"""

from __future__ import annotations

import base64
import copy
import datetime
import http.server
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.equipment.localcluster import admission


def _certificates(directory: Path) -> tuple[bytes, Path, Path]:
    """(the CA's PEM, the server certificate file, its key file) for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge-test-mesh-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = directory / "webhook.crt", directory / "webhook.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM), cert_file, key_file


def review_response(review: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview answer: allowed, with the injector's additions as a JSONPatch."""
    request = review.get("request") or {}
    pod = request.get("object") or {}
    injected = admission.inject(copy.deepcopy(pod))
    patch = []
    for path, before, after in (
            ("/spec/initContainers", (pod.get("spec") or {}).get("initContainers"),
             injected["spec"].get("initContainers")),
            ("/spec/containers", (pod.get("spec") or {}).get("containers"),
             injected["spec"].get("containers")),
            ("/spec/volumes", (pod.get("spec") or {}).get("volumes"),
             injected["spec"].get("volumes")),
            ("/metadata/labels", (pod.get("metadata") or {}).get("labels"),
             injected["metadata"].get("labels")),
            ("/metadata/annotations", (pod.get("metadata") or {}).get("annotations"),
             injected["metadata"].get("annotations"))):
        if after != before:
            patch.append({"op": "replace" if before is not None else "add", "path": path,
                          "value": after})
    response: dict[str, Any] = {"uid": request.get("uid"), "allowed": True}
    if patch:
        response.update(patchType="JSONPatch",
                        patch=base64.b64encode(json.dumps(patch).encode()).decode())
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": response}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = json.dumps(review_response(json.loads(body))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


class MeshWebhook:
    """Serve the injector and register it for `namespace`; `close()` removes both."""

    def __init__(self, kubectl: Any, namespace: str) -> None:
        self.kubectl = kubectl
        self.dir = Path(tempfile.mkdtemp(prefix="bridge-mesh-webhook-"))
        ca, cert, key = _certificates(self.dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        self.name = f"bridge-test-mesh-{secrets.token_hex(3)}"
        kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration", "metadata": {"name": self.name},
            "webhooks": [{
                "name": "inject.mesh.bridge.test",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate",
                                 "caBundle": base64.b64encode(ca).decode()},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""],
                           "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": namespace}},
                "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail", "timeoutSeconds": 5}]}))

    def close(self) -> None:
        self.kubectl("delete", "mutatingwebhookconfiguration", self.name,
                     "--ignore-not-found", check=False)
        self.server.shutdown()
        self.server.server_close()
