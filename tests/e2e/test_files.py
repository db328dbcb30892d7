"""The pod's files on the laptop (issue 15), end to end.

On the local test cluster (the default) pods have no volumes, so what runs there is the
wiring: `--mount-mode` gives the command a $BRIDGE_ROOT (and the env file), live mounts and
copies appear and are gone after the session ends, after Ctrl-C, and after SIGKILL +
`bridge restore`. The files themselves (a ConfigMap volume, a Secret volume, the projected
service-account token, an emptyDir an init container wrote; a ConfigMap change seen live) need
a real Kubernetes: with BRIDGE_TEST_CLUSTER=real those tests run against the suite's real
cluster (or the one of BRIDGE_TEST_KUBECONFIG), with the sidecar image
BRIDGE_TEST_SIDECAR_IMAGE and the app image BRIDGE_TEST_APP_IMAGE (default python:3.11-slim);
otherwise they skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.local import mounts
from tests.e2e.support import (
    LOCAL_SERVER,
    REPO,
    WAIT,
    Bridge,
    free_port,
    http_get,
    wait_until,
)
from tests.equipment.realcluster import fixture as real_cluster
from tests.helpers import http_server

LIVE_PROBLEM = mounts.live_problem()
MODES = ["copy", pytest.param("live", marks=pytest.mark.skipif(
    LIVE_PROBLEM is not None, reason=f"live mode cannot work here: {LIVE_PROBLEM}"))]
on_local = pytest.mark.only_on("local", why="the wiring ($BRIDGE_ROOT, the env file, mounts "
                               "and copies made and gone, their records) is the laptop's")
on_real = pytest.mark.only_on("real", why="the files themselves: the local test cluster has no "
                              "volumes (no ConfigMap/Secret/emptyDir mounts, no service-account "
                              "token)")
SA_DIR = "var/run/secrets/kubernetes.io/serviceaccount"


def mounted_roots() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[0].startswith(mounts.FSNAME_PREFIX)]


def records(state: Path) -> list[Path]:
    return list((state / "bridge" / "mounts").glob("*.json"))


@pytest.fixture
def state_home(tmp_path: Path) -> Path:
    home = tmp_path / "state"
    home.mkdir()
    return home


# ------------------------------------------------------------------ local cluster: wiring


@on_local
@pytest.mark.parametrize("mode", MODES)
def test_the_command_gets_bridge_root_and_nothing_is_left(
        make_workload: Any, state_home: Path, mode: str) -> None:
    w = make_workload()
    port = free_port()
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--mount-mode", mode, "--",
                 sys.executable, "-c", LOCAL_SERVER, str(port),
                 env={"XDG_STATE_HOME": str(state_home)})
    b.wait_for("gets the traffic")
    assert ("mounting the pod's files live" if mode == "live" else
            "copying a snapshot of the pod's files") in b.stderr
    env = json.loads(wait_until("the child's environment through the Service",
                                lambda: http_get(w.service_ip(), 80, "/env")))
    root = env["BRIDGE_ROOT"]
    assert probe(Path(root)) == "[]"  # the local cluster's pods have no volumes
    assert (root in mounted_roots()) == (mode == "live")
    assert len(records(state_home)) == 1
    http_get(w.service_ip(), 80, "/exit/0")
    assert b.wait() == 0, b.stderr
    assert root not in mounted_roots()
    assert probe(Path(root)) == "gone"
    assert records(state_home) == []


@on_local
@pytest.mark.parametrize("mode", MODES)
def test_attach_mode_env_file_has_bridge_root_and_ctrl_c_leaves_nothing(
        make_workload: Any, state_home: Path, tmp_path: Path, mode: str) -> None:
    w = make_workload()
    port = free_port()
    w.local_server(port)
    env_file = tmp_path / "hello.env"
    given = tmp_path / "files"
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--mount-mode", mode,
                 "--mount", str(given), "--env-file", str(env_file),
                 env={"XDG_STATE_HOME": str(state_home)})
    b.wait_for("attached")
    assert f"BRIDGE_ROOT={given}" in env_file.read_text().replace("'", "")
    assert given.is_dir()
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr
    assert str(given) not in mounted_roots()
    assert probe(given) == "gone"  # bridge made it, bridge removed it
    assert records(state_home) == []


@on_local
@pytest.mark.parametrize("mode", MODES)
def test_sigkill_then_bridge_restore_leaves_nothing(
        make_workload: Any, state_home: Path, mode: str) -> None:
    w = make_workload()
    port = free_port()
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--mount-mode", mode, "--",
                 sys.executable, "-c", LOCAL_SERVER, str(port),
                 env={"XDG_STATE_HOME": str(state_home)})
    b.wait_for("gets the traffic")
    env = json.loads(wait_until("the child's environment through the Service",
                                lambda: http_get(w.service_ip(), 80, "/env")))
    root = env["BRIDGE_ROOT"]
    b.kill()
    wait_until("the command to die with the SIGKILLed bridge",  # PR_SET_PDEATHSIG
               lambda: not accepts(port))
    # left behind by the killed bridge; looked up in its parent, never stat()ed: until sshfs's
    # auto_unmount has run, a stat of the dead FUSE mount fails (ENOTCONN) as if it were gone
    assert os.path.basename(root) in os.listdir(os.path.dirname(root))
    code, r = w.run_bridge("restore", "hello", env={"XDG_STATE_HOME": str(state_home)})
    assert code == 0, r.stderr
    assert f"removed the pod's files a dead session left at {root}" in r.stderr
    assert root not in mounted_roots()
    assert probe(Path(root)) == "gone"
    assert records(state_home) == []


@on_local
@pytest.mark.skipif(LIVE_PROBLEM is not None, reason=f"live mode cannot work here: {LIVE_PROBLEM}")
def test_a_live_mount_comes_back_after_the_ssh_connection_drops(
        make_workload: Any, state_home: Path, tmp_path: Path) -> None:
    """The sidecar is frozen until the agent's keepalives give up, then thawed: sshfs ended
    with the old connection; bridge mounts again on the new one."""
    from tests.e2e.support import drop_ssh, proxy_pod

    w = make_workload()
    port = free_port()
    w.local_server(port)
    given = tmp_path / "files"
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--mount-mode", "live",
                 "--mount", str(given),
                 env={"XDG_STATE_HOME": str(state_home), "BRIDGE_KEEPALIVE_INTERVAL": "0.5"})
    with detached_at_the_end(given):
        b.wait_for("attached")
        assert str(given) in mounted_roots()
        assert probe(given) == "[]"
        drop_ssh(b, proxy_pod(w)["metadata"]["name"])
        wait_until("the files to be mounted again",
                   lambda: b.stderr.count(f"mounted the pod's files at {given}") == 2)
        assert mounted_roots().count(str(given)) == 1
        assert probe(given) == "[]"  # answers (the local cluster's pods have no volumes)
        assert "no longer live" not in b.stderr
        b.signal(signal.SIGINT)
        assert b.wait() == 0, b.stderr
        assert str(given) not in mounted_roots()
        assert probe(given) == "gone"
        assert records(state_home) == []


def probe(path: Path, timeout: float = WAIT) -> str:
    """What a listing of `path` gives, done by a child process: the JSON list, "gone", or
    "ERROR ..." (a FUSE mount whose sshfs is stuck blocks an access in the kernel, which no
    timeout of this process could interrupt; the child is killed instead)."""
    code = ("import json, os, sys\n"
            "try:\n    print(json.dumps(sorted(os.listdir(sys.argv[1]))))\n"
            "except FileNotFoundError:\n    print('gone')\n"
            "except OSError as e:\n    print('ERROR', e)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # a FUSE request's wait is killable
        proc.wait(timeout=10)
        raise AssertionError(f"an access of {path} blocked for {timeout:g}s (a dead FUSE "
                             "mount)") from None
    return out.strip()


@contextlib.contextmanager
def detached_at_the_end(root: Path) -> Iterator[None]:
    """Whatever the test did, no FUSE mount is left at `root` (lazily detached: a dead one
    would block pytest's removal of its tmp directories)."""
    try:
        yield
    finally:
        if str(root) in mounted_roots():
            subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True,
                           timeout=WAIT, stdin=subprocess.DEVNULL)


@on_local
def test_a_non_empty_mount_dir_is_refused_before_anything_changes(
        make_workload: Any, tmp_path: Path) -> None:
    w = make_workload()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    code, b = w.run_bridge("swap", "hello", "--mount", str(full), "--", "true")
    assert code != 0
    assert f"--mount {full} is not empty" in b.stderr and "nothing was changed" in b.stderr
    assert (full / "keep.txt").read_text() == "mine"
    assert w.proxies() == [] and w.our_annotations() == {}


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ real Kubernetes: the files

# The swapped app: answers GET /files with what it reads under $BRIDGE_ROOT, /exit/N exits.
FILES_APP = http_server("""
if self.path == "/files":
    body = json.dumps({"root": ROOT, **{rel: read(rel) for rel in (
        "etc/config/app.yaml", "etc/tls/tls.key", "work/prepared.txt",
        "var/run/secrets/kubernetes.io/serviceaccount/token",
        "var/run/secrets/kubernetes.io/serviceaccount/namespace",
        "var/run/secrets/kubernetes.io/serviceaccount/ca.crt")}}).encode()
else:
    body = b"laptop\\n"
""", after="""
if self.path.startswith("/exit/"):
    os._exit(int(self.path.rsplit("/", 1)[1]))
""", prelude="""
ROOT = os.environ["BRIDGE_ROOT"]
def read(rel):
    try:
        with open(os.path.join(ROOT, rel)) as f:
            return f.read()
    except OSError as e:
        return f"ERROR {e}"
""")

APP_SERVER = http_server('body = b"cluster\\n"', host="", ports="[8080]")
TLS_KEY = "-----BEGIN FAKE KEY-----\nfor the e2e test\n-----END FAKE KEY-----\n"


def real_manifests(name: str, image: str) -> dict[str, Any]:
    prepare = "open('/work/prepared.txt', 'w').write('written by the init container\\n')"
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "initContainers": [{"name": "prepare", "image": image,
                                    "imagePullPolicy": "IfNotPresent",
                                    "command": ["python3", "-c", prepare],
                                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                "containers": [{
                    "name": "web", "image": image, "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-c", APP_SERVER],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/config"},
                        {"name": "tls", "mountPath": "/etc/tls", "readOnly": True},
                        {"name": "work", "mountPath": "/work"},
                    ]}],
                "volumes": [
                    {"name": "config", "configMap": {"name": f"{name}-config"}},
                    {"name": "tls", "secret": {"secretName": f"{name}-tls"}},
                    {"name": "work", "emptyDir": {}},
                ]}}}}
    return {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-config"},
         "data": {"app.yaml": "greeting: first\n"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-tls"},
         "data": {"tls.key": base64.b64encode(TLS_KEY.encode()).decode()}},
        deployment,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80,
                                                        "targetPort": "http"}]}},
    ]}


class Real:
    """A namespace on the real cluster and the commands this test runs against it."""

    def __init__(self, kubeconfig: str, namespace: str, tmp: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.tmp = tmp
        self.bridges: list[Bridge] = []

    def k(self, *args: str, input: str | None = None) -> str:
        return subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args],
            input=input, capture_output=True, text=True, check=True, timeout=WAIT).stdout

    def bridge(self, *args: str, env: dict[str, str]) -> Bridge:
        n = len(self.bridges)
        err, out = self.tmp / f"bridge{n}.err", self.tmp / f"bridge{n}.out"
        with open(err, "w") as e, open(out, "w") as o:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "--kubeconfig", self.kubeconfig, "-n",
                 self.namespace, *args],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=o, stderr=e, text=True,
                env={**{k: v for k, v in os.environ.items() if k not in real_cluster.SETTINGS},
                     "PYTHONUNBUFFERED": "1", **env})
        b = Bridge(proc, err, out)
        self.bridges.append(b)
        return b


@pytest.fixture
def real(cluster: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Real]:
    kubeconfig = os.environ.get("BRIDGE_TEST_KUBECONFIG") or str(cluster.kubeconfig)
    ns = f"e2e-files-{secrets.token_hex(3)}"
    r = Real(kubeconfig, ns, tmp_path)
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "create", "namespace", ns],
                   check=True, capture_output=True, timeout=WAIT)
    try:
        image = os.environ.get("BRIDGE_TEST_APP_IMAGE", "python:3.11-slim")
        r.k("apply", "-f", "-", input=json.dumps(real_manifests("web", image)))
        r.k("rollout", "status", "deployment/web", f"--timeout={int(3 * WAIT)}s")
        yield r
    finally:
        for b in r.bridges:
            b.kill()
        subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "delete", "namespace", ns,
                        "--wait=false"], capture_output=True, timeout=WAIT)


def sidecar_image_args() -> list[str]:
    image = os.environ.get("BRIDGE_TEST_SIDECAR_IMAGE")
    return ["--sidecar-image", image] if image else []


def files_of(port: int) -> dict[str, str]:
    return json.loads(http_get("127.0.0.1", port, "/files"))  # type: ignore[no-any-return]


def check_token_against_the_api_server(real: Real, token: str, ca: str) -> None:
    """The token is the pod's: the API server takes it, and says whose it is."""
    config = json.loads(subprocess.run(
        ["kubectl", "--kubeconfig", real.kubeconfig, "config", "view", "--minify", "--raw",
         "-o", "json"], capture_output=True, text=True, check=True, timeout=WAIT).stdout)
    server = config["clusters"][0]["cluster"]["server"]
    context = ssl.create_default_context(cadata=ca)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    request = urllib.request.Request(
        f"{server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        data=json.dumps(review).encode(), method="POST",
        headers={"Authorization": f"Bearer {token.strip()}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=30) as resp:
        answer = json.loads(resp.read())
    user = answer["status"]["userInfo"]["username"]
    assert user == f"system:serviceaccount:{real.namespace}:default"


@on_real
@pytest.mark.parametrize("mode", MODES)
def test_the_app_reads_the_pods_files_through_bridge_root(
        real: Real, state_home: Path, mode: str) -> None:
    port = free_port()
    b = real.bridge("swap", "web", "--port", f"http:{port}", "--mount-mode", mode,
                    *sidecar_image_args(), "--", sys.executable, "-c", FILES_APP, str(port),
                    env={"XDG_STATE_HOME": str(state_home)})
    b.wait_for("gets the traffic", timeout=3 * WAIT)
    got = wait_until("the app to answer", lambda: files_of(port))
    root = got["root"]
    assert got["etc/config/app.yaml"] == "greeting: first\n"
    assert got["etc/tls/tls.key"] == TLS_KEY
    assert got["work/prepared.txt"] == "written by the init container\n"
    assert got[f"{SA_DIR}/namespace"] == real.namespace
    token = got[f"{SA_DIR}/token"]
    assert token.count(".") == 2, token[:40]  # a JWT
    check_token_against_the_api_server(real, token, got[f"{SA_DIR}/ca.crt"])
    if mode == "live":
        real.k("patch", "configmap", "web-config", "--type=merge", "-p",
               json.dumps({"data": {"app.yaml": "greeting: second\n"}}))
        # the kubelet updates a ConfigMap volume on its own sync period (about a minute)
        wait_until("the ConfigMap change to show on the laptop",
                   lambda: files_of(port)["etc/config/app.yaml"] == "greeting: second\n",
                   timeout=4 * WAIT, every=1.0)
    http_get("127.0.0.1", port, "/exit/0")
    assert b.wait(timeout=3 * WAIT) == 0, b.stderr
    assert not os.path.exists(root)
    assert root not in mounted_roots()
    assert records(state_home) == []


@on_real
def test_sigkill_then_restore_leaves_no_files_on_the_real_cluster(
        real: Real, state_home: Path) -> None:
    port = free_port()
    mode = "copy" if LIVE_PROBLEM else "live"
    b = real.bridge("swap", "web", "--port", f"http:{port}", "--mount-mode", mode,
                    *sidecar_image_args(), "--", sys.executable, "-c", FILES_APP, str(port),
                    env={"XDG_STATE_HOME": str(state_home)})
    b.wait_for("gets the traffic", timeout=3 * WAIT)
    root = wait_until("the app to answer", lambda: files_of(port))["root"]
    b.kill()
    wait_until("the command to die with the SIGKILLed bridge",  # PR_SET_PDEATHSIG
               lambda: not accepts(port))
    restore = real.bridge("restore", "web", env={"XDG_STATE_HOME": str(state_home)})
    assert restore.wait(timeout=3 * WAIT) == 0, restore.stderr
    assert not os.path.exists(root)
    assert root not in mounted_roots()
    assert records(state_home) == []
