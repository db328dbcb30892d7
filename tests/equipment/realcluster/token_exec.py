#!/usr/bin/env python3
"""A kubeconfig exec credential plugin: mints a short-lived ServiceAccount token with the
TokenRequest API and prints it as an ExecCredential (client.authentication.k8s.io/v1).

    token_exec.py --server URL --ca CA --cert CERT --key KEY --namespace NS --serviceaccount SA
                  [--expire-after SECONDS --run-log FILE]

It authenticates with a client certificate that may only create tokens for that one
ServiceAccount (and, for --expire-after, create and delete Secrets in its namespace). Standard
library only, so any python3 runs it.

TokenRequest's shortest lifetime is ten minutes. With --expire-after N the token dies after N
seconds anyway: it is bound to a Secret made for it (spec.boundObjectRef), the answer's
expirationTimestamp says now+N, and a detached process deletes the Secret GRACE seconds after
that, from when on the API server refuses the token (401). Each run appends one JSON line
(the Secret's name, the reported expiry) to --run-log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

API_VERSION = "client.authentication.k8s.io/v1"
EXPIRATION_SECONDS = 600  # the API's minimum: tokens live ten minutes
GRACE = 2.0  # seconds between the reported expiry and the bound Secret's deletion


class Api:
    def __init__(self, a: argparse.Namespace) -> None:
        self.server = a.server
        self.ctx = ssl.create_default_context(cafile=a.ca)
        self.ctx.load_cert_chain(a.cert, a.key)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.server}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=20) as resp:
            return json.load(resp)


def _secrets(ns: str) -> str:
    return f"/api/v1/namespaces/{ns}/secrets"


def delete_later(a: argparse.Namespace, secret: str, after: float) -> None:
    """A process of its own (new session, no inherited pipes: the caller reads our stdout to
    its end) that deletes the Secret `after` seconds from now."""
    args = [sys.executable, os.path.abspath(__file__), "--server", a.server, "--ca", a.ca,
            "--cert", a.cert, "--key", a.key, "--namespace", a.namespace,
            "--serviceaccount", a.serviceaccount, "--delete-secret", secret,
            "--delete-after", str(after)]
    subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="token_exec")
    for flag in ("--server", "--ca", "--cert", "--key", "--namespace", "--serviceaccount"):
        p.add_argument(flag, required=True)
    p.add_argument("--expiration-seconds", type=int, default=EXPIRATION_SECONDS)
    p.add_argument("--expire-after", type=float, default=0.0)
    p.add_argument("--run-log", default="")
    p.add_argument("--delete-secret", default="")
    p.add_argument("--delete-after", type=float, default=0.0)
    a = p.parse_args(argv)
    api = Api(a)
    if a.delete_secret:
        time.sleep(a.delete_after)
        api.call("DELETE", f"{_secrets(a.namespace)}/{a.delete_secret}")
        return 0
    spec: dict[str, Any] = {"expirationSeconds": a.expiration_seconds}
    what = f"TokenRequest for {a.namespace}/{a.serviceaccount} at {a.server}"
    try:
        if a.expire_after:
            what = f"a Secret in {a.namespace} at {a.server}"
            secret = api.call("POST", _secrets(a.namespace), {
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"generateName": "bridge-test-token-",
                             "labels": {"app.kubernetes.io/part-of": "bridge-real"}}})
            name, uid = secret["metadata"]["name"], secret["metadata"]["uid"]
            delete_later(a, name, a.expire_after + GRACE)
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Secret", "name": name,
                                      "uid": uid}
            what = f"TokenRequest for {a.namespace}/{a.serviceaccount} at {a.server}"
        status = api.call("POST", f"/api/v1/namespaces/{a.namespace}/serviceaccounts/"
                          f"{a.serviceaccount}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": spec})["status"]
    except (OSError, urllib.error.URLError, KeyError, ValueError) as err:
        print(f"token_exec: {what} failed: {err}", file=sys.stderr)
        return 1
    expires = status["expirationTimestamp"]
    if a.expire_after:
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=a.expire_after)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        if a.run_log:
            with open(a.run_log, "a") as log:
                log.write(json.dumps({"secret": name, "expires": expires}) + "\n")
    json.dump({"apiVersion": API_VERSION, "kind": "ExecCredential",
               "status": {"token": status["token"], "expirationTimestamp": expires}},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
