"""Kubeconfigs: one per component (client certificate) and the user's, with the test
cluster's contexts (token admin as current-context, client-certificate admin, `restricted`
read-only, least-privilege); the least-privilege user is a ServiceAccount whose short-lived
tokens an exec plugin mints (TokenRequest); `bridge-test-sa` names the same context."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.equipment.localcluster import kubeconfig as test_kubeconfig

from .config import Config
from .objects import SA_NAME, SA_NAMESPACE
from .pki import ClusterPki, Issued

CONTEXT_SA = "bridge-test-sa"
CONTEXT_EXPIRING = "bridge-test-sa-expiring"  # the same user; its tokens die early
TOKEN_EXEC = Path(__file__).resolve().parent / "token_exec.py"


def component(server: str, ca: Path, cert: Issued) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server,
                                               "certificate-authority": str(ca)}}],
        "users": [{"name": "u", "user": {"client-certificate": str(cert.cert),
                                         "client-key": str(cert.key)}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }


def user(config: Config, pki: ClusterPki, admin_token: str,
         restricted_token: str) -> dict[str, Any]:
    """The test cluster's contexts; its least-privilege user (`bridge-test-least`, also named
    `bridge-test-sa` here) is the ServiceAccount, its tokens minted by the exec plugin."""
    kc = test_kubeconfig.kubeconfig(config.server, pki.ca.read_bytes(), admin_token,
                                    restricted_token, pki.admin.cert.read_bytes(),
                                    pki.admin.key.read_bytes(), least_token="")
    sa_user = {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": sys.executable,
        "args": [str(TOKEN_EXEC), "--server", config.server, "--ca", str(pki.ca),
                 "--cert", str(pki.token_minter.cert), "--key", str(pki.token_minter.key),
                 "--namespace", SA_NAMESPACE, "--serviceaccount", SA_NAME],
        "interactiveMode": "Never", "provideClusterInfo": False}}
    least = [u for u in kc["users"]
             if u["name"] == context_user(kc, test_kubeconfig.CONTEXT_LEAST)]
    assert len(least) == 1, "the test cluster's kubeconfig has one least-privilege user"
    least[0]["user"] = sa_user
    kc["contexts"].append({"name": CONTEXT_SA, "context": {
        "cluster": test_kubeconfig.CLUSTER, "user": least[0]["name"], "namespace": "default"}})
    return kc


def with_expiring_tokens(kc: dict[str, Any], lifetime: float,
                         run_log: Path) -> dict[str, Any]:
    """A copy of the kubeconfig `kc` (as `user` made it, or the running cluster's) with a
    context `bridge-test-sa-expiring`: the `bridge-test-sa` user, run by THIS tree's plugin with
    `--expire-after LIFETIME --run-log RUN_LOG` (tokens refused after about LIFETIME s)."""
    import copy

    out = copy.deepcopy(kc)
    base = next(u for u in out["users"] if u["name"] == context_user(out, CONTEXT_SA))
    exec_block = copy.deepcopy(base["user"]["exec"])
    args = list(exec_block["args"])
    args[0] = str(TOKEN_EXEC)  # the plugin of this tree (the running cluster's may be older)
    exec_block["args"] = [*args, "--expire-after", f"{lifetime:g}", "--run-log", str(run_log)]
    name = f"{base['name']}-expiring"
    out["users"].append({"name": name, "user": {"exec": exec_block}})
    cluster = next(c for c in out["contexts"] if c["name"] == CONTEXT_SA)["context"]["cluster"]
    out["contexts"].append({"name": CONTEXT_EXPIRING, "context": {
        "cluster": cluster, "user": name, "namespace": "default"}})
    return out


def context_user(kc: dict[str, Any], context: str) -> str:
    return str(next(c["context"]["user"] for c in kc["contexts"] if c["name"] == context))


write = test_kubeconfig.write
