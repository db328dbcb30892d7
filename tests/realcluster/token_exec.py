#!/usr/bin/env python3
"""A kubeconfig exec credential plugin: mints a short-lived ServiceAccount token with the
TokenRequest API and prints it as an ExecCredential (client.authentication.k8s.io/v1).

    token_exec.py --server URL --ca CA --cert CERT --key KEY --namespace NS --serviceaccount SA

It authenticates with a client certificate that may only create tokens for that one
ServiceAccount. Standard library only, so any python3 runs it.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request

API_VERSION = "client.authentication.k8s.io/v1"
EXPIRATION_SECONDS = 600  # the API's minimum: tokens live ten minutes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="token_exec")
    for flag in ("--server", "--ca", "--cert", "--key", "--namespace", "--serviceaccount"):
        p.add_argument(flag, required=True)
    p.add_argument("--expiration-seconds", type=int, default=EXPIRATION_SECONDS)
    a = p.parse_args(argv)
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": {"expirationSeconds": a.expiration_seconds}}).encode()
    url = (f"{a.server}/api/v1/namespaces/{a.namespace}/serviceaccounts/"
           f"{a.serviceaccount}/token")
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
            status = json.load(resp)["status"]
    except (OSError, urllib.error.URLError, KeyError, ValueError) as err:
        print(f"token_exec: TokenRequest for {a.namespace}/{a.serviceaccount} at {a.server} "
              f"failed: {err}", file=sys.stderr)
        return 1
    json.dump({"apiVersion": API_VERSION, "kind": "ExecCredential",
               "status": {"token": status["token"],
                          "expirationTimestamp": status["expirationTimestamp"]}}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
