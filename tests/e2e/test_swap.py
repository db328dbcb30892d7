"""`bridge swap` end to end on the local test cluster, with real HTTP through the Service.

After every test the `make_workload` fixture checks that the original Deployment has its
replicas (Ready), and that no proxy and no annotation of bridge's remains.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import pytest
from dotenv import dotenv_values

from bridge.model import state
from sidecar import protocol

from .support import (
    LOCAL_SERVER,
    free_port,
    http_get,
    until_laptop_answers,
    until_the_heartbeat_settles,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def local_child(*ports: int) -> list[str]:
    import sys

    return ["--", sys.executable, "-c", LOCAL_SERVER, *map(str, ports)]


def test_traffic_reaches_the_child_on_every_port(make_workload: Any) -> None:
    """Named targetPort, REMOTE:LOCAL mapping, and a port below 1024, through svc/NAME."""
    http_port, other_port = free_port(), free_port()
    w = make_workload(
        ports=[{"name": "http", "containerPort": http_port},
               {"containerPort": other_port}, {"name": "low", "containerPort": 80}],
        service_ports=[{"name": "web", "port": 80, "targetPort": "http"},
                       {"name": "other", "port": 81, "targetPort": other_port},
                       {"name": "low", "port": 82, "targetPort": 80}])
    ip = w.service_ip()
    local_other, local_low = free_port(), free_port()
    b = w.bridge("swap", "svc/hello", "--port", "http", "--port", f"{other_port}:{local_other}",
                 "--port", f"80:{local_low}", *local_child(http_port, local_other, local_low))
    b.wait_for("swapped: ")
    proxy = w.assert_swapped()
    pod = proxy["spec"]["template"]["spec"]
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in \
        pod["securityContext"]["sysctls"]
    # every Service port now reaches the laptop process, on the mapped local port
    until_laptop_answers(ip, 80, f"laptop {http_port}\n")
    until_laptop_answers(ip, 81, f"laptop {local_other}\n")
    until_laptop_answers(ip, 82, f"laptop {local_low}\n")
    for _ in range(5):
        assert http_get(ip, 80) == f"laptop {http_port}\n"
        assert http_get(ip, 81) == f"laptop {local_other}\n"
        assert http_get(ip, 82) == f"laptop {local_low}\n"
    assert http_get(ip, 80, "/exit/0") == f"laptop {http_port}\n"
    assert b.wait() == 0
    assert "restored" in b.stderr
    assert http_get(ip, 80).startswith("cluster ")
    assert http_get(ip, 82).startswith("cluster ")


PRELUDE = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings}
  data: {LOG_LEVEL: debug, FROM_CM_PREFIXED: "yes"}
- apiVersion: v1
  kind: Secret
  metadata: {name: creds}
  stringData:
    password: "s3cr3t 'quoted' $HOME"
    cert: |
      -----BEGIN CERT-----
      line two
      -----END CERT-----
- apiVersion: v1
  kind: Service
  metadata: {name: db}
  spec:
    selector: {app: nothing}
    ports: [{name: pg, port: 5432}]
"""


def test_child_environment_comes_from_the_pod(make_workload: Any, tmp_path: Any) -> None:
    w = make_workload(
        prelude=PRELUDE,
        extra_env=[
            {"name": "PLAIN", "value": "plain value"},
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                                  "key": "LOG_LEVEL"}}},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                                   "key": "password"}}},
            {"name": "HOME", "value": "/pod-home"},
        ],
        env_from=[{"configMapRef": {"name": "settings"}, "prefix": "CM_"},
                  {"secretRef": {"name": "creds"}}])
    port = w.get("deployment", "hello")["spec"]["template"]["spec"]["containers"][0][
        "ports"][0]["containerPort"]
    dump, env_file = tmp_path / "env.json", tmp_path / "pod.env"
    script = ("import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w')); "
              "sys.exit(0)")
    import os
    import sys

    env_json = tmp_path / "pod.json"
    code, b = w.run_bridge("swap", "hello", "--env-file", str(env_file), "--env-json",
                           str(env_json), "--",
                           sys.executable, "-c", script, str(dump))
    assert code == 0, b.stderr
    env = json.loads(dump.read_text())
    assert env["PLAIN"] == "plain value"  # env
    assert env["FROM_CM"] == "debug"  # configMapKeyRef
    assert env["DB_PASSWORD"] == "s3cr3t 'quoted' $HOME"  # secretKeyRef
    assert env["CM_LOG_LEVEL"] == "debug"  # envFrom configMap with prefix
    assert env["cert"] == "-----BEGIN CERT-----\nline two\n-----END CERT-----\n"  # envFrom secret
    db_ip = w.service_ip("db")
    assert env["DB_SERVICE_HOST"] == db_ip  # service links
    assert env["DB_SERVICE_PORT"] == "5432"
    assert env["HELLO_SERVICE_HOST"] == w.service_ip()
    assert env["PORTS"] == str(port)
    # the laptop's own session variables are kept; bridge's sidecar settings are not leaked
    assert env["HOME"] == os.environ["HOME"]
    assert env["PATH"] == os.environ["PATH"]
    # (BRIDGE_HEARTBEAT_INTERVAL: the suite's setting for bridge itself, the laptop's own)
    assert not any(k.startswith(protocol.SETTINGS_PREFIX) for k in env
                   if k != "BRIDGE_HEARTBEAT_INTERVAL")
    # the env file holds the pod's values, multi-line secrets intact
    written = dict(dotenv_values(env_file))  # the dotenv syntax IDEs and python-dotenv read
    assert written["cert"] == env["cert"]
    assert written["DB_PASSWORD"] == env["DB_PASSWORD"]
    assert "HOME" not in written  # the laptop's own variables are not the pod's to export
    assert "PYTHONPATH" not in written  # nothing of how the test cluster runs the sidecar
    assert json.loads(env_json.read_text()) == written
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.only_on("local", why="the exit code is the laptop command's")
@pytest.mark.parametrize("script,expected", [
    ("import sys; sys.exit(7)", 7),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + signal.SIGTERM),
])
def test_exit_code_propagates(make_workload: Any, script: str, expected: int) -> None:
    import sys

    w = make_workload(replicas=1)
    log = w.tmp / "bridge.log"
    code, b = w.run_bridge("swap", "hello", "-q", "--no-wait", "--log-file", str(log), "--",
                           sys.executable,
                           "-c", "print('from the child', flush=True); " + script)
    assert code == expected, b.stderr
    assert b.stdout == "from the child\n"  # the child's stdout, nothing of bridge's
    assert "bridge:" not in b.stderr  # -q: no progress
    assert "deployment/hello restored" in log.read_text()  # ...but all of it in the log file


LAPTOP_SIGNAL = pytest.mark.only_on("local", why="which signal ends the session is the laptop's "
                                                 "business; the restore after SIGINT runs on both "
                                                 "clusters")


@pytest.mark.parametrize("sig", [
    signal.SIGINT, pytest.param(signal.SIGTERM, marks=LAPTOP_SIGNAL),
    pytest.param(signal.SIGHUP, marks=LAPTOP_SIGNAL)], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_signal_restores(make_workload: Any, sig: int) -> None:
    w = make_workload()
    port = free_port()
    ip = w.service_ip()
    b = w.bridge("swap", "hello", "--port", f"http:{port}", *local_child(port))
    b.wait_for("swapped: ")
    until_laptop_answers(ip, 80, f"laptop {port}\n")
    b.signal(sig)
    if sig == signal.SIGINT:  # a second Ctrl-C while restoring must not skip the restore
        b.wait_for("restoring deployment/hello")
        b.signal(signal.SIGINT)
    code = b.wait()
    assert code == 128 + sig, b.stderr  # the child died of the forwarded signal
    assert "deployment/hello restored" in b.stderr
    assert http_get(ip, 80).startswith("cluster ")


def test_attach_mode_ends_on_ctrl_c(make_workload: Any) -> None:
    w = make_workload()
    b, port = w.attach()
    assert f"127.0.0.1:{port}" in b.stderr
    env_path = b.stderr.split("environment in ", 1)[1].split(";", 1)[0]
    assert dotenv_values(env_path)["PORTS"]
    until_laptop_answers(w.service_ip(), 80, f"laptop {port}\n")
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr
    assert b.stdout == ""  # progress goes to stderr only


def test_kill_9_then_bridge_restore(make_workload: Any) -> None:
    w = make_workload()
    b, port = w.attach()
    b.kill()  # SIGKILL: nothing of bridge's cleanup runs
    proxy = w.assert_swapped()["metadata"]["name"]
    # a user who may not write: every step fails, each with the command to finish by hand
    code, r = w.run_bridge("--context", "bridge-test-restricted", "restore", "hello")
    assert code == 1
    ctx = f"kubectl --context bridge-test-restricted -n {w.namespace}"
    assert f"run: {ctx} scale deployment/hello --replicas=2" in r.stderr
    assert f"run: {ctx} delete deployment/{proxy}" in r.stderr
    assert "kept bridge's annotations" in r.stderr
    assert w.assert_swapped()["metadata"]["name"] == proxy  # still swapped, lock intact
    code, r = w.run_bridge("restore", "hello")
    assert code == 0, r.stderr
    w.assert_restored()
    assert http_get(w.service_ip(), 80).startswith("cluster ")
    code, r = w.run_bridge("restore", "hello")  # idempotent
    assert code == 0, r.stderr
    assert "not swapped; nothing to restore" in r.stderr


def test_kill_9_then_next_swap_repairs_the_stale_session(make_workload: Any) -> None:
    import sys

    w = make_workload()
    b, port = w.attach(env={"BRIDGE_HEARTBEAT_INTERVAL": "0.5", "BRIDGE_OWNER": "dead@laptop",
                            **w.another_laptop()})
    b.kill()
    old_proxy = w.assert_swapped()["metadata"]["name"]
    until_the_heartbeat_settles(w, old_proxy)
    # the dead session was another machine's: the next swap watches the heartbeat stay the
    # same for its TTL (2s), then repairs first
    code, r = w.run_bridge("swap", "hello", "--", sys.executable, "-c",
                           "import sys; sys.exit(3)", env={"BRIDGE_HEARTBEAT_TTL": "2"})
    assert code == 3, r.stderr
    assert "checking whether that session is alive (up to 2s)" in r.stderr
    assert "dead@laptop" in r.stderr and "whose heartbeat did not change" in r.stderr
    assert f"deleted proxy deployment/{old_proxy}" in r.stderr


def test_kill_9_on_this_laptop_then_next_swap_repairs_at_once(make_workload: Any) -> None:
    """The killed bridge ran here: this machine knows its process is gone, so the next swap
    repairs the session without sitting through the heartbeat's TTL (60 s by default)."""
    import sys

    w = make_workload()
    b, port = w.attach()
    b.kill()
    old_proxy = w.assert_swapped()["metadata"]["name"]
    code, r = w.run_bridge("swap", "hello", "--", sys.executable, "-c",
                           "import sys; sys.exit(3)")
    assert code == 3, r.stderr
    assert "checking whether that session is alive" not in r.stderr
    assert (f"whose bridge on this machine (pid {b.proc.pid}) is no longer running; restoring "
            "it first") in r.stderr
    assert f"deleted proxy deployment/{old_proxy}" in r.stderr
    w.assert_restored()
    code, status = w.run_bridge("status")
    assert code == 0 and "No swapped deployments" in status.stderr, status.stderr


@pytest.mark.only_on("local", why="bridge's reading of its lock, and its message")
def test_second_swap_is_refused_naming_the_holder(make_workload: Any) -> None:
    w = make_workload()
    first, port = w.attach(env={"BRIDGE_OWNER": "alice@alices-laptop"})
    proxy = w.assert_swapped()
    before = w.get("deployment", "hello")["metadata"]["annotations"]
    code, second = w.run_bridge("swap", "hello", "--", "true",
                                env={"BRIDGE_OWNER": "bob@bobs-laptop"})
    assert code == 1
    errors = [ln for ln in second.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1
    assert "already swapped by alice@alices-laptop since" in errors[0]
    assert errors[0].endswith("nothing was changed")
    # nothing changed: the same lock (the heartbeat is on the proxy), the same single proxy
    assert w.get("deployment", "hello")["metadata"]["annotations"] == before
    assert [p["metadata"]["name"] for p in w.proxies()] == [proxy["metadata"]["name"]]
    code, status = w.run_bridge("status")
    assert code == 0
    assert "alice@alices-laptop" in status.stdout and "live" in status.stdout
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.stderr


@pytest.mark.only_on("real", why="RBAC's refusal, whose text is quoted: the real authorizer is "
                                 "the authority")
def test_restricted_user_gets_forbidden_and_nothing_changes(make_workload: Any) -> None:
    w = make_workload()
    before = w.get("deployment", "hello")
    code, b = w.run_bridge("--context", "bridge-test-restricted", "swap", "hello", "--",
                           "true")
    assert code == 1
    errors = [ln for ln in b.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, b.stderr
    assert "forbidden" in errors[0]
    assert 'cannot patch resource "deployments"' in errors[0]
    assert errors[0].endswith("nothing was changed")
    after = w.get("deployment", "hello")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert w.proxies() == []


@pytest.mark.only_on("local", why="the CLI's error messages, checked before any write")
@pytest.mark.parametrize("args,message", [
    (["swap", "nope", "--", "true"], 'no deployment or service named "nope"'),
    (["swap", "deployment/nope", "--", "true"], 'deployment "nope" not found'),
    (["swap", "hello", "--port", "12", "--", "true"], "has no port 12"),
    (["swap", "hello", "--container", "db", "--", "true"], "has no container 'db'"),
    (["-n", "no-such-ns", "swap", "hello", "--", "true"], 'namespace "no-such-ns" not found'),
    (["swap", "hello", "--env-file", "/no-such-dir/x.env", "--", "true"],
     "--env-file /no-such-dir/x.env: directory /no-such-dir does not exist"),
    (["swap", "hello", "--env-json", "/", "--", "true"], "--env-json / is a directory"),
])
def test_user_errors_change_nothing(make_workload: Any, args: list[str], message: str) -> None:
    w = make_workload(replicas=1)
    rv = w.get("deployment", "hello")["metadata"]["resourceVersion"]
    code, b = w.run_bridge(*args)
    assert code == 1
    errors = [ln for ln in b.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, b.stderr
    assert message in errors[0]
    assert errors[0].endswith("nothing was changed")
    assert w.get("deployment", "hello")["metadata"]["resourceVersion"] == rv


@pytest.mark.only_on("real", why="an image that cannot be pulled: the real kubelet is the "
                                 "authority on how a pod fails to start")
def test_proxy_pod_that_cannot_start_is_reported(make_workload: Any) -> None:
    w = make_workload(replicas=1)
    code, b = w.run_bridge("swap", "hello", "--sidecar-image", "example.invalid/nothing:1",
                           "--timeout", "30", "--", "true")
    assert code == 1
    errors = [ln for ln in b.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, b.stderr
    assert "proxy pod" in errors[0]
    assert errors[0].endswith("the cluster was restored as it was")


def test_handover_without_a_gap(make_workload: Any) -> None:
    """A client requesting the Service every 50 ms through swap-in and restore: no failure."""
    w = make_workload()
    ip = w.service_ip()
    port = free_port()
    w.local_server(port)
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + 240  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                answers.append(http_get(ip, 80, timeout=5).split()[0])
            except OSError as e:
                failures.append(f"{len(answers)}: {e}")
            time.sleep(0.05)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        wait_until("a few answers from the cluster", lambda: answers.count("cluster") >= 5)
        b = w.bridge("swap", "hello", "--port", f"http:{port}")
        b.wait_for("attached")
        wait_until("answers from the laptop", lambda: answers[-5:] == ["laptop"] * 5)
        b.signal(signal.SIGINT)
        assert b.wait() == 0, b.stderr
        n = len(answers)
        wait_until("more answers after the restore", lambda: len(answers) >= n + 5)
    finally:
        stop.set()
        t.join(timeout=30)
    assert failures == []
    assert answers[0] == "cluster" and "laptop" in answers and answers[-5:] == ["cluster"] * 5


def test_tunnel_comes_back_when_the_proxy_pod_is_replaced(make_workload: Any) -> None:
    """The proxy pod dies (deleted, evicted...): its Deployment makes a new one, bridge
    reconnects to it (new pod, new host key) and traffic reaches the laptop again."""
    w = make_workload()
    ip = w.service_ip()
    b, port = w.attach(env={"BRIDGE_HEARTBEAT_INTERVAL": "0.5"})
    until_laptop_answers(ip, 80, f"laptop {port}\n")
    old = json.loads(w.k("get", "pods", "-l", state.SESSION_LABEL, "-o", "json"))["items"]
    assert len(old) == 1
    old_name = old[0]["metadata"]["name"]
    w.k("delete", "pod", old_name, "--wait=false")
    b.wait_for("reconnected")
    assert "connection to the proxy pod lost" in b.stderr
    wait_until("the laptop to answer through the new proxy pod",
               lambda: http_get(ip, 80) == f"laptop {port}\n")
    pods = json.loads(w.k("get", "pods", "-l", state.SESSION_LABEL, "-o", "json"))["items"]
    assert old_name not in [p["metadata"]["name"] for p in pods]
    # the heartbeat (on the proxy Deployment) kept going meanwhile
    proxy = w.proxies()[0]["metadata"]["name"]

    def beat() -> int:
        return int(state.beat_of(w.get("deployment", proxy)["metadata"]["annotations"]) or 0)

    first = beat()
    wait_until("a newer heartbeat", lambda: beat() > first)
    b.signal(signal.SIGTERM)
    assert b.wait() == 0, b.stderr


@pytest.mark.only_on("local", why="`--all` is a label query either API server answers; the "
                                  "restore itself runs on both (test_kill_9_then_bridge_restore)")
def test_restore_all_after_kill_9(make_workload: Any) -> None:
    w = make_workload()
    b, port = w.attach("deployment/hello")
    b.kill()
    w.assert_swapped()
    code, s = w.run_bridge("status")
    assert code == 0 and "hello" in s.stdout
    code, r = w.run_bridge("restore", "--all")
    assert code == 0, r.stderr
    w.assert_restored()
    code, s = w.run_bridge("status")
    assert code == 0 and s.stdout == "" and "No swapped deployments" in s.stderr
    code, r = w.run_bridge("restore", "--all")
    assert code == 0 and "nothing to restore" in r.stderr


def test_ctrl_c_during_setup_restores(make_workload: Any) -> None:
    w = make_workload()
    port = free_port()
    b = w.bridge("swap", "hello", "--port", f"http:{port}", *local_child(port))
    b.wait_for("created proxy deployment")
    b.signal(signal.SIGINT)
    # whether it landed before the command started (bridge ends) or after (forwarded): 130
    assert b.wait() == 130, b.stderr
    assert "deployment/hello restored" in b.stderr


GRANDCHILD = """
import os, signal, subprocess, sys, time
pidfile, port = sys.argv[1], sys.argv[2]
stubborn = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(pidfile, "w").write(str(stubborn.pid))
os.execv(sys.executable, [sys.executable, "-c", LOCAL, port])
"""


@pytest.mark.only_on("local", why="the laptop's process tree")
def test_child_process_tree_is_gone_after_the_session(make_workload: Any, tmp_path: Any) -> None:
    """A grandchild that ignores SIGTERM is killed once the grace period is over."""
    import os
    import sys

    w = make_workload(replicas=1)
    port, pidfile = free_port(), tmp_path / "grandchild.pid"
    script = GRANDCHILD.replace("LOCAL", repr(LOCAL_SERVER))
    b = w.bridge("swap", "hello", "--port", f"http:{port}", "--", sys.executable, "-c", script,
                 str(pidfile), str(port))
    b.wait_for("swapped: ")
    grandchild = int(pidfile.read_text())
    os.kill(grandchild, 0)  # alive
    b.signal(signal.SIGTERM)
    assert b.wait() == 128 + signal.SIGTERM, b.stderr

    def gone() -> bool:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return True
        # a zombie whose parent is gone is reaped by init; count it as gone
        with open(f"/proc/{grandchild}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")

    try:
        wait_until("the grandchild to be gone", gone, timeout=15)
    finally:
        if not gone():
            os.kill(grandchild, signal.SIGKILL)


@pytest.mark.only_on("local", why="bridge's watch of its own lock")
def test_session_ends_when_someone_else_restores(make_workload: Any) -> None:
    w = make_workload()
    b, port = w.attach()
    code, r = w.run_bridge("restore", "hello")
    assert code == 0, r.stderr
    assert b.wait() == 1
    errors = [ln for ln in b.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, b.stderr
    assert "restored or taken over by someone else" in errors[0]


# Passes in the original's pods, fails in a proxy pod (its name carries "-bridge-").
NOT_A_PROXY = ["python3", "-c", "import os, sys; sys.exit('-bridge-' in os.environ['HOSTNAME'])"]


@pytest.mark.only_on("real", why="probes and preStop hooks are the kubelet's: the real one is the "
                                 "authority")
def test_probes_and_hooks_of_the_original_do_not_touch_the_proxy(make_workload: Any) -> None:
    """Liveness/startup probes that would fail in the proxy, and a preStop hook that would
    hold its deletion, are not carried over: the sidecar is never restarted."""
    w = make_workload(container_extra={
        "livenessProbe": {"exec": {"command": NOT_A_PROXY}, "periodSeconds": 1,
                          "failureThreshold": 1},
        "startupProbe": {"exec": {"command": NOT_A_PROXY}, "periodSeconds": 1,
                         "failureThreshold": 1},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "60"]}}},
    })
    ip = w.service_ip()
    b, port = w.attach()
    proxy_container = w.assert_swapped()["spec"]["template"]["spec"]["containers"][0]
    assert not {"livenessProbe", "startupProbe", "lifecycle"} & set(proxy_container)
    until_laptop_answers(ip, 80, f"laptop {port}\n")
    for _ in range(30):  # many probe periods: every request answered by the laptop
        assert http_get(ip, 80) == f"laptop {port}\n"
        time.sleep(0.1)
    pod = json.loads(w.k("get", "pods", "-l", state.SESSION_LABEL, "-o", "json"))["items"][0]
    assert [c["restartCount"] for c in pod["status"]["containerStatuses"]] == [0]
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr


@pytest.mark.only_on("local", why="bridge's resolution of a Service's selector")
def test_service_selecting_several_deployments_is_ambiguous(make_workload: Any) -> None:
    w = make_workload(replicas=1)
    twin = json.loads(w.k("get", "deployment", "hello", "-o", "json"))
    twin = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hello-twin"},
            "spec": {**twin["spec"], "replicas": 0}}
    w.kubectl("-n", w.namespace, "apply", "--validate=false", "-f", "-", input=json.dumps(twin))
    try:
        code, b = w.run_bridge("swap", "svc/hello", "--", "true")
        assert code == 1
        errors = [ln for ln in b.stderr.splitlines() if "error" in ln]
        assert len(errors) == 1, b.stderr
        assert "selects pods of several Deployments (deployment/hello, deployment/hello-twin)" \
            in errors[0]
        assert errors[0].endswith("nothing was changed")
    finally:
        w.k("delete", "deployment", "hello-twin")
