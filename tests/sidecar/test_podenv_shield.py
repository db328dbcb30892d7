"""The sidecar's own process does not run with the app's LD_PRELOAD, PYTHONPATH & co. (issue 19,
item 3), yet `env` still serves them to the laptop, where they are held back unless allowed.

The sidecar container's environment is built as the kubelet builds it (the local test
cluster's `container_environment`, `$(NAME)` expansion included) from the planned proxy."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.local import env as envmod
from bridge.model import plan
from bridge.model.target import PortMap
from sidecar import protocol
from tests.equipment.localcluster.podenv import container_environment
from tests.sidecar.harness import ClientKey, running_sidecar

pytestmark = pytest.mark.timeout(60)

HARNESS_SETS = {protocol.ENV_AUTHORIZED_KEY, protocol.ENV_PORTS, protocol.ENV_SSH_PORT,
                protocol.ENV_HEALTH_PORT}


def _template(evil: Path) -> dict[str, Any]:
    app = {"name": "app", "image": "app:1",
           "env": [{"name": "PYTHONPATH", "value": str(evil)},
                   {"name": "APP_MODE", "value": "debug"},
                   {"name": "DERIVED", "value": "$(PYTHONPATH)/lib"}],
           "envFrom": [{"configMapRef": {"name": "cfg"}}]}
    return {"metadata": {"name": "hello", "namespace": "ns"},
            "spec": {"selector": {"matchLabels": {"app": "hello"}},
                     "template": {"metadata": {"labels": {"app": "hello"}},
                                  "spec": {"containers": [app]}}}}


def _kubelet_env(container: dict[str, Any]) -> dict[str, str]:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"enableServiceLinks": False}}
    configmaps = [{"metadata": {"name": "cfg", "namespace": "ns"},
                   "data": {"LD_PRELOAD": "/nonexistent.so", "FROM_MAP": "1"}}]
    built = container_environment(pod, container, configmaps=configmaps, secrets=[],
                                  services=[], pod_ip="10.0.0.9", host_ip="10.0.0.1")
    return {k: v for k, v in built.items() if k not in HARNESS_SETS}


def _served(tmp_path: Path, key: ClientKey, extra: dict[str, str]) -> dict[str, str]:
    with running_sidecar(tmp_path, key, extra_env=extra) as sidecar:
        async def scenario() -> str:
            async with await sidecar.connect(key) as conn:
                return str((await conn.run(protocol.CMD_ENV, check=True)).stdout)

        served: dict[str, str] = json.loads(asyncio.run(scenario()))
        assert "ERROR: ld.so" not in sidecar.log()  # the loader never saw the app's preload
        return served


def test_sidecar_runs_clean_and_serves_the_apps_loader_and_python_variables(
        tmp_path: Path, key: ClientKey) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "pwned"
    # Imported by site at start-up if PYTHONPATH reaches the sidecar: it would take it over.
    (evil / "sitecustomize.py").write_text(
        f"import os\nopen({str(marker)!r}, 'w').close()\nos._exit(3)\n")
    proxy = plan.plan_proxy(_template(evil), plan.Options(
        container="app", ports=(PortMap(8080, 8080, "http"),), session="s1", owner="a@b",
        authorized_key=key.public_line, image="sidecar:test"))
    container = proxy["spec"]["template"]["spec"]["containers"][0]
    built = _kubelet_env(container)
    assert built["PYTHONPATH"] == "" and built["LD_PRELOAD"] == ""  # the sidecar's own

    served = _served(tmp_path, key, built)
    assert not marker.exists()
    assert served["PYTHONPATH"] == str(evil) and served["LD_PRELOAD"] == "/nonexistent.so"
    assert served["DERIVED"] == f"{evil}/lib" and served["FROM_MAP"] == "1"
    assert served["APP_MODE"] == "debug"
    assert not any(k.startswith(protocol.SETTINGS_PREFIX) for k in served)
    assert "LD_AUDIT" not in served and "PATH" not in served  # not the app's: not served

    # On the laptop: held back by default, passed with --env-allow.
    kept, held = envmod.hold_back(served)
    assert {"PYTHONPATH", "LD_PRELOAD"} <= set(held) and "APP_MODE" in kept
    kept, held = envmod.hold_back(served, allow=["PYTHONPATH", "LD_PRELOAD"])
    assert kept["PYTHONPATH"] == str(evil) and kept["LD_PRELOAD"] == "/nonexistent.so"


def test_without_the_shield_the_apps_pythonpath_takes_the_sidecar_over(
        tmp_path: Path, key: ClientKey) -> None:
    """The control: the app's container env as it was copied before (no shield entries)."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "pwned"
    (evil / "sitecustomize.py").write_text(
        f"import os\nopen({str(marker)!r}, 'w').close()\nos._exit(3)\n")
    app = copy.deepcopy(_template(evil)["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(AssertionError, match="instead of a host key"):
        _served(tmp_path, key, _kubelet_env(app))
    assert marker.exists()


@pytest.mark.timeout(600)  # one interpreter per name (about 70), on a shared machine
def test_every_shielded_variable_means_unset_when_empty() -> None:
    """The shield blanks each name (a pod spec cannot unset one): for each, an empty value must
    leave the sidecar's interpreter, its crypto and OpenSSL exactly as with none."""
    import os
    import subprocess
    import sys

    probe = ("import ssl, asyncssh, sidecar.server; from cryptography.hazmat.primitives."
             "asymmetric import ed25519; ed25519.Ed25519PrivateKey.generate(); print('ok')")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    repo = Path(__file__).resolve().parents[2]

    def run(extra: dict[str, str]) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], cwd=repo,
                              env={**base, **extra}, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    reference = run({})
    assert reference == (0, "ok\n")
    for name in plan.SIDECAR_SHIELDED:
        if name != "PATH":
            assert run({name: ""}) == reference, name
