"""Attacks by someone with ordinary rights in the namespace (issue 13), end to end on the local
test cluster: they fail, and the cluster is left as it was.

- a bare pod carrying the session's label, running the real sidecar with the victim's public
  key and a `BASH_ENV` of the attacker's choosing, is never tunnelled to (item 1);
- a forged lock never makes `bridge restore` delete another Deployment or the target, and a
  forged lock is not "repaired" by `bridge swap` (item 2).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
from typing import Any

import pytest

from bridge.model import state

from .support import Workload, http_get, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


BRIDGES_CHECK = pytest.mark.only_on("local", why="the attack meets bridge's own check (a pod's "
                                                 "proof, a forged lock), whichever API server "
                                                 "stores the attacker's objects")


def impostor_pod(w: Workload, proxy: dict[str, Any], name: str) -> str:
    """A bare pod built from the proxy's own template (the session label, the victim's public
    key, the real sidecar image), with BASH_ENV added: what the review created."""
    template = copy.deepcopy(proxy["spec"]["template"])
    for c in template["spec"]["containers"]:
        c["env"] = (c.get("env") or []) + [{"name": "BASH_ENV", "value": "/tmp/pwn.sh"}]
    return json.dumps({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "labels": template["metadata"]["labels"]},
                       "spec": template["spec"]})


@BRIDGES_CHECK
def test_a_bare_labelled_pod_never_gets_the_tunnel(make_workload: Any) -> None:
    """The genuine proxy pod goes away (its Deployment scaled to 0 by the attacker) and the
    impostor is the only labelled, running pod: bridge waits it out and reconnects to the
    proxy Deployment's new pod once there is one."""
    w = make_workload()
    b, port = w.attach()
    proxy = w.assert_swapped()
    pname = proxy["metadata"]["name"]
    w.k("scale", f"deployment/{pname}", "--replicas=0")
    b.wait_for("connection to the proxy pod lost")
    w.kubectl("-n", w.namespace, "apply", "--validate=false", "-f", "-",
              input=impostor_pod(w, proxy, "impostor"))
    wait_until("the impostor to run", lambda: w.get("pod", "impostor")["status"].get(
        "phase") == "Running")
    b.wait_for("ignoring pod impostor")
    w.k("scale", f"deployment/{pname}", "--replicas=1")
    b.wait_for("reconnected")
    assert "tunnel to pod impostor" not in b.stderr
    w.k("delete", "pod", "impostor", "--grace-period=0")
    ip = w.service_ip()
    wait_until("the laptop to answer through the Service",
               lambda: http_get(ip, 80) == f"laptop {port}\n")
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr


def forge(w: Workload, **fields: str) -> None:
    t = state.format_time(state.parse_time("2026-01-01T00:00:00Z"))
    values = {state.SESSION: "x", state.OWNER: "mallory", state.REPLICAS: "7",
              state.PROXY: "hello-bridge-x", state.STARTED_AT: t, state.HEARTBEAT: t,
              state.PORTS: "80"}
    values.update({getattr(state, k.upper()): v for k, v in fields.items()})
    w.k("annotate", "deployment/hello", "--overwrite",
        *[f"{k}={v}" for k, v in values.items() if v != "<absent>"])


def unforge(w: Workload) -> None:
    w.k("annotate", "deployment/hello", *[k + "-" for k in state.KEYS])


@BRIDGES_CHECK
@pytest.mark.parametrize("proxy", ["payments", "hello"])
def test_a_forged_lock_makes_restore_delete_nothing(make_workload: Any, proxy: str) -> None:
    w = make_workload()
    make_workload(name="payments", replicas=1)
    forge(w, proxy=proxy)
    code, b = w.run_bridge("restore", "hello")
    assert code != 0
    assert "nothing was changed" in b.stderr and "kubectl annotate" in b.stderr, b.stderr
    assert w.get("deployment", "payments")["spec"]["replicas"] == 1
    assert w.get("deployment", "hello")["spec"]["replicas"] == w.replicas  # not 7
    unforge(w)


@BRIDGES_CHECK
def test_a_forged_lock_is_not_repaired_by_swap(make_workload: Any) -> None:
    """A lock without heartbeat (as bridge writes them now) naming another Deployment as its
    proxy: neither watched nor repaired, whatever the TTL."""
    w = make_workload()
    make_workload(name="payments", replicas=1)
    forge(w, proxy="payments", heartbeat="<absent>", replicas="2")
    code, b = w.run_bridge("swap", "hello", "--", "true", env={"BRIDGE_HEARTBEAT_TTL": "1"})
    assert code != 0
    assert "is not a name bridge gives the proxy" in b.stderr, b.stderr
    assert "nothing was changed" in b.stderr and "checking whether" not in b.stderr, b.stderr
    assert w.get("deployment", "payments")["spec"]["replicas"] == 1
    assert w.proxies() == []
    unforge(w)


def test_a_forged_host_key_line_cannot_break_the_reconnect(make_workload: Any,
                                                           kubectl: Any) -> None:
    """The review: through `kubectl port-forward` to the proxy pod, a pre-auth DISCONNECT whose
    reason held `\\nhost-key: <attacker's key>`; bridge then pinned that key on its next
    reconnect and never got back in (the original stayed at zero). Now the sidecar escapes it
    and bridge reads only the first announcement: the reconnect succeeds."""
    from bridge.model import plan
    from tests.equipment.clients import kubectl_port_forward
    from tests.helpers import FORGED_KEY, disconnect_packet

    from .support import drop_ssh, proxy_pod

    w = make_workload()
    ip = w.service_ip()
    b, port = w.attach(env={"BRIDGE_KEEPALIVE_INTERVAL": "0.5"})
    pod = proxy_pod(w)
    ssh_port = plan.ssh_port_of(pod, "web")
    with kubectl_port_forward(kubectl, w.namespace, f"pod/{pod['metadata']['name']}",
                              ssh_port) as forward:
        with socket.create_connection(("127.0.0.1", forward.local[ssh_port]), timeout=10) as s:
            s.sendall(b"SSH-2.0-mallory\r\n")
            s.recv(256)
            s.sendall(disconnect_packet(f"bye\nhost-key: {FORGED_KEY}\n"))
            while s.recv(4096):
                pass
    wait_until("the attack in the sidecar's log", lambda: "mallory" in w.k(
        "logs", pod["metadata"]["name"]) or "host-key: " + FORGED_KEY in w.k(
        "logs", pod["metadata"]["name"]).replace("\\n", "\n"))
    drop_ssh(b, pod["metadata"]["name"])  # bridge reconnects, reading the host key again
    wait_until("the laptop to answer again", lambda: http_get(ip, 80) == f"laptop {port}\n")
    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr


@pytest.mark.only_on("local", why="the laptop's ports and users")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_attach_mode_refuses_a_port_another_user_listens_on(make_workload: Any) -> None:
    """Another user of the laptop listens on the forwarded port first: the cluster's requests
    would go to them. bridge refuses, restores, and no request reaches the squatter."""
    from .support import free_port

    w = make_workload()
    port = free_port()
    squatter = subprocess.Popen(
        ["/usr/bin/python3", "-c", SQUATTER, str(port)], user=65534,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    w.children.append(squatter)
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "up"
    code, b = w.run_bridge("swap", "hello", "--port", f"http:{port}")
    assert code != 0
    assert f"another user listens on 127.0.0.1:{port}" in b.stderr, b.stderr
    assert "attached" not in b.stderr
    squatter.kill()
    out, _ = squatter.communicate(timeout=10)
    assert "got a request" not in out


SQUATTER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("up", flush=True)
while True:
    c, _ = s.accept()
    print("got a request", flush=True)
    c.close()
"""


@pytest.mark.only_on("local", why="the laptop's env and shell")
def test_the_pods_bash_env_runs_nothing_on_the_laptop(make_workload: Any, tmp_path: Any) -> None:
    """The review: a pod variable `BASH_ENV='$(command)'` (bash expands it when a script
    starts) ran the command on the laptop. Held back now, named on one line, commented out in
    the env file; `--env-allow BASH_ENV` takes it (which shows the reproduction is real)."""
    marker = tmp_path / "pwned"
    w = make_workload(extra_env=[{"name": "BASH_ENV", "value": f"$(touch {marker})"},
                                 {"name": "LD_PRELOAD", "value": "/nonexistent/evil.so"}])
    env_file = tmp_path / "app.env"
    # --outbound none: torsocks (bridge's own LD_PRELOAD) would hide whether the pod's got in
    code, b = w.run_bridge("swap", "hello", "--env-file", str(env_file), "--outbound", "none",
                           "--", "bash", "-c", "echo ld=${LD_PRELOAD:-none}")
    assert code == 0, b.stderr
    assert not marker.exists()
    assert "ld=none" in b.stdout
    held = [ln for ln in b.stderr.splitlines() if "held back" in ln]
    assert len(held) == 1 and "BASH_ENV" in held[0] and "LD_PRELOAD" in held[0]
    assert f"# BASH_ENV='$(touch {marker})'" in env_file.read_text()
    code, b = w.run_bridge("swap", "hello", "--env-allow", "BASH_ENV", "--", "bash", "-c", "true")
    assert code == 0, b.stderr
    assert marker.exists()


@pytest.mark.only_on("local", why="the attack needs a pod that sees the laptop's files (its "
                                  "PYTHONPATH is a directory here): the local test cluster's pods "
                                  "are local processes; a real one's containers would not find it "
                                  "and prove nothing")
def test_the_sidecar_runs_without_the_pods_pythonpath_yet_serves_it(make_workload: Any,
                                                                      tmp_path: Any) -> None:
    """Issue 19, item 3: the proxy container is a copy of the app's; its PYTHONPATH and
    LD_PRELOAD must not reach the sidecar's own Python (a sitecustomize there would take it
    over), yet the laptop receives both: held back by default, passed with --env-allow."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "sidecar-pwned"
    (evil / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'sidecar' in sys.orig_argv:\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    os._exit(3)\n")
    w = make_workload(extra_env=[{"name": "PYTHONPATH", "value": str(evil)},
                                 {"name": "LD_PRELOAD", "value": "/nonexistent/evil.so"}])
    show = 'echo "pp=${PYTHONPATH:-none} ld=${LD_PRELOAD:-none}"'
    code, b = w.run_bridge("swap", "hello", "--outbound", "none", "--", "sh", "-c", show)
    assert code == 0, b.stderr
    assert not marker.exists()
    assert "pp=none ld=none" in b.stdout
    code, b = w.run_bridge("swap", "hello", "--outbound", "none", "--env-allow", "PYTHONPATH",
                           "--env-allow", "LD_PRELOAD", "--", "sh", "-c", show)
    assert code == 0, b.stderr
    assert f"pp={evil} ld=/nonexistent/evil.so" in b.stdout
    assert not marker.exists()
