"""Outbound (issue 10): a swapped app of the test's own reaches another Service of the cluster
from the laptop, through the pod: by short name, FQDN, $X_SERVICE_HOST, ClusterIP and pod IP,
over urllib, requests and curl, and raw TCP; 50 MB intact; the ordinary errors for an unknown
name and a closed port; localhost stays local. Command mode (torsocks), attach mode (the
process started by the test from the env file), --outbound proxy, --forward; a clear error
without torsocks; another local user cannot use the proxy."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.local import env as envmod
from tests.e2e.support import Workload, free_port
from tests.equipment.realcluster import fixture as real_cluster
from tests.helpers import http_server

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("torsocks") is None, reason="needs torsocks")]

BIG_MB = 50
BLOCK = bytes(range(256)) * 4096  # 1 MiB
BIG_SHA256 = hashlib.sha256(BLOCK * BIG_MB).hexdigest()

# The other Service's pods: HTTP on the first port (/big: 50 MiB), a line echo on the second.
ORDERS_SERVER = http_server("""
if self.path == "/big":
    self.send_response(200)
    self.send_header("Content-Length", str(BIG * len(BLOCK)))
    self.end_headers()
    for _ in range(BIG):
        self.wfile.write(BLOCK)
    return
body = f"cluster {os.environ['HOSTNAME']} {http_port}\\n".encode()
""", host="", ports="[http_port]", http11=True, prelude="""
import socketserver
http_port, echo_port = (int(p) for p in os.environ["PORTS"].split(","))
BLOCK = bytes(range(256)) * 4096
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"echo " + line)
class T(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
threading.Thread(target=T(("", echo_port), Echo).serve_forever, daemon=True).start()
""").replace("BIG", str(BIG_MB))

# The laptop app: listens on the swapped port, then makes every call and writes the outcomes.
APP = http_server(
    r'body = b"laptop\n"', ports="[listen_port]", prelude="""
import hashlib, subprocess, urllib.request
kind, out, listen_port, cluster_ip, pod_ip, pod_port, ns = sys.argv[1:8]
""", then=r"""
results = {}
def check(name, fn):
    try:
        results[name] = fn()
    except Exception as e:
        results[name] = "error " + type(e).__name__ + ": " + str(e)
def get(url):
    return urllib.request.urlopen(url, timeout=60).read().decode().strip()
def curl(url):
    p = subprocess.run(["curl", "-sS", "--max-time", "60", url], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else f"error curl {p.returncode}: {p.stderr}"
def echo(host, port):
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(b"hello\n")
        return s.makefile().readline().strip()
def big():
    h, n = hashlib.sha256(), 0
    with urllib.request.urlopen("http://orders/big", timeout=120) as r:
        while chunk := r.read(1 << 20):
            h.update(chunk); n += len(chunk)
    return [n, h.hexdigest()]
env_url = f"http://{os.environ.get('ORDERS_SERVICE_HOST')}:{os.environ.get('ORDERS_SERVICE_PORT')}/"
if kind == "forward":
    check("env", lambda: get(env_url))
    check("env_host", lambda: os.environ.get("ORDERS_SERVICE_HOST"))
else:
    import requests
    check("short", lambda: get("http://orders/"))
    check("fqdn", lambda: get(f"http://orders.{ns}.svc.cluster.local/"))
    check("env", lambda: get(env_url))
    check("clusterip", lambda: get(f"http://{cluster_ip}/"))
    check("podip", lambda: get(f"http://{pod_ip}:{pod_port}/"))
    check("requests", lambda: requests.get("http://orders/", timeout=60).text.strip())
    check("curl", lambda: curl(f"http://orders.{ns}/"))
    check("big", big)
if kind == "inject":
    check("tcp", lambda: echo("orders", 9000))
    check("tcp_podip", lambda: echo(pod_ip, int(os.environ["ECHO_PORT"])))
    check("unknown", lambda: socket.getaddrinfo("no-such-service", 80))
    check("refused", lambda: echo(pod_ip, 1))
    # TEST-NET-1: nothing answers; no client-side timeout, so only bridge's bounds end it
    check("unreachable", lambda: socket.create_connection(("192.0.2.1", 80)))
    check("localhost", lambda: get(f"http://localhost:{listen_port}/"))
    check("loopback", lambda: get(f"http://127.0.0.1:{listen_port}/"))
with open(out, "w") as f:
    json.dump(results, f)
""")


def make_orders(make_workload: Any) -> tuple[Workload, str, str, int, int]:
    http_port, echo_port = free_port(), free_port()
    w = make_workload(
        "orders", replicas=1,
        ports=[{"name": "http", "containerPort": http_port},
               {"name": "echo", "containerPort": echo_port}],
        service_ports=[{"name": "http", "port": 80, "targetPort": "http"},
                       {"name": "echo", "port": 9000, "targetPort": "echo"}],
        container_extra={"command": ["python3", "-c", ORDERS_SERVER]})
    pods = json.loads(w.k("get", "pods", "-l", "app=orders", "-o", "json"))["items"]
    pod_ip = pods[0]["status"]["podIP"]
    return w, w.service_ip(), pod_ip, http_port, echo_port


def app_argv(kind: str, out: Path, listen: int, cluster_ip: str, pod_ip: str, pod_port: int,
             ns: str) -> list[str]:
    return [sys.executable, "-c", APP, kind, str(out), str(listen), cluster_ip, pod_ip,
            str(pod_port), ns]


def assert_reached(r: dict[str, Any], want: str) -> None:
    for key in ("short", "fqdn", "env", "clusterip", "podip", "requests", "curl"):
        assert r[key] == want, (key, r[key])
    assert r["big"] == [BIG_MB * len(BLOCK), BIG_SHA256]


# What a pod itself gets connecting to TEST-NET-1 (bounded), formatted like the app's check().
POD_UNREACHABLE = """
import socket
try:
    socket.create_connection(("192.0.2.1", 80), timeout=30)
    print("connected")
except Exception as e:
    print("error " + type(e).__name__ + ": " + str(e))
"""


def unreachable_from_a_pod(w: Workload) -> tuple[str, ...]:
    """The error the app must see for 192.0.2.1:80: on the local test cluster (pods have no
    route out) a timeout or no route; on the real one, what a pod of it gets itself (this
    machine's own network may answer TEST-NET-1: a refusal is then the ordinary error)."""
    if real_cluster.selected() != "real":
        return ("error TimeoutError: [Errno 110]", "error OSError: [Errno 113]",
                "error OSError: [Errno 101]")
    pod = json.loads(w.k("get", "pods", "-l", f"app={w.name}", "-o", "json"))["items"][0]
    got = w.k("exec", pod["metadata"]["name"], "--", "python3", "-c", POD_UNREACHABLE).strip()
    if got.startswith("error TimeoutError"):  # the pod's own bound; bridge has none
        return ("error TimeoutError: [Errno 110]",)
    assert got.startswith("error "), f"a pod reaches 192.0.2.1:80: {got}"
    return (got.split(":", 1)[0] + ":",)


def assert_inject_extras(r: dict[str, Any], unreachable: tuple[str, ...]) -> None:
    assert r["tcp"] == "echo hello"
    assert r["tcp_podip"] == "echo hello"
    assert r["unknown"].startswith("error gaierror"), r["unknown"]
    assert r["refused"].startswith("error ConnectionRefusedError"), r["refused"]
    assert r["unreachable"].startswith(unreachable), (r["unreachable"], unreachable)
    assert r["localhost"] == "laptop"
    assert r["loopback"] == "laptop"


def orders_says(w: Workload) -> str:
    """What the orders pod answers: `cluster POD PORT`."""
    pod = json.loads(w.k("get", "pods", "-l", "app=orders", "-o", "json"))["items"][0]
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    return f"cluster {pod['metadata']['name']} {port}"


def test_command_mode_reaches_the_cluster_through_torsocks(make_workload: Any,
                                                           tmp_path: Path) -> None:
    hello = make_workload("hello", replicas=1)
    orders, cluster_ip, pod_ip, http_port, echo_port = make_orders(make_workload)
    out, listen = tmp_path / "r.json", free_port()
    code, b = hello.run_bridge(
        "swap", "hello", "--port", f"http:{listen}", "--outbound", "inject", "--",
        *app_argv("inject", out, listen, cluster_ip, pod_ip, http_port, hello.namespace),
        env={"ECHO_PORT": str(echo_port)})
    assert code == 0, b.stderr
    r = json.loads(out.read_text())
    assert_reached(r, orders_says(orders))
    assert_inject_extras(r, unreachable_from_a_pod(orders))


@pytest.mark.skipif(shutil.which("torsocks") is None, reason="needs torsocks")
@pytest.mark.only_on("local", why="torsocks and the command are the laptop's")
def test_sh_c_runs_under_torsocks_with_its_exit_code(make_workload: Any) -> None:
    """torsocks reads `sh` as its own `show` subcommand: the command ran nothing and bridge
    exited 0 (issue 21.1). It runs, under torsocks, and its exit code is bridge's."""
    hello = make_workload("hello", replicas=1)
    code, b = hello.run_bridge("swap", "hello", "--outbound", "inject", "--",
                               "sh", "-c", 'echo "ran with $LD_PRELOAD"; exit 7')
    assert code == 7, b.stderr
    assert "ran with " in b.stdout and "libtorsocks" in b.stdout, b.stdout + b.stderr
    assert 'LD_PRELOAD=""' not in b.stdout
    hello.assert_restored()


@pytest.mark.only_on("local", why="the env file and torsocks are the laptop's; what a pod reaches "
                                  "is checked on both clusters by the command-mode test")
def test_attach_mode_env_file_loads_torsocks(make_workload: Any, tmp_path: Path) -> None:
    hello = make_workload("hello", replicas=1)
    orders, cluster_ip, pod_ip, http_port, echo_port = make_orders(make_workload)
    listen, env_file = free_port(), tmp_path / "hello.env"
    b = hello.bridge("swap", "hello", "--port", f"http:{listen}", "--outbound", "inject",
                     "--env-file", str(env_file))
    b.wait_for("attached")
    # the printed instructions: the file's variables for the one process (issue 21.7)
    said = f"with the variables of {env_file}, for it alone (your shell keeps none of them): `"
    assert said in b.stderr, b.stderr
    hint = b.stderr.partition(said)[2].partition("`")[0]
    assert hint == f"dotenv -f {env_file} run -- YOUR_COMMAND"
    env = envmod.parse_dotenv(env_file.read_text())
    assert "libtorsocks" in env["LD_PRELOAD"] and env["TORSOCKS_CONF_FILE"]
    assert env["ALL_PROXY"].startswith("socks5h://")
    out = tmp_path / "r.json"
    # The IDE's process: started by the test with the file's environment and nothing else of
    # bridge's (no torsocks wrapper), the way the hint says, from a shell that keeps nothing.
    app = shlex.join(app_argv("inject", out, listen, cluster_ip, pod_ip, http_port,
                              hello.namespace))
    shell = {**os.environ, "ECHO_PORT": str(echo_port),
             "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    typed = hint.replace("YOUR_COMMAND", app) + '\necho "after=${LD_PRELOAD-unset}"'
    done = subprocess.run(["bash", "--norc", "-c", typed], env=shell, capture_output=True,
                          text=True, check=True, timeout=240)
    assert done.stdout.splitlines()[-1] == "after=unset", done.stdout + done.stderr
    r = json.loads(out.read_text())
    assert_reached(r, orders_says(orders))
    assert_inject_extras(r, unreachable_from_a_pod(orders))
    b.signal(2)
    assert b.wait() == 0, b.stderr


@pytest.mark.only_on("local", why="the proxy variables are the laptop's; what a pod reaches is "
                                  "checked on both clusters by the command-mode test")
def test_proxy_mode_gives_proxy_variables(make_workload: Any, tmp_path: Path) -> None:
    hello = make_workload("hello", replicas=1)
    orders, cluster_ip, pod_ip, http_port, _ = make_orders(make_workload)
    out, listen = tmp_path / "r.json", free_port()
    code, b = hello.run_bridge(
        "swap", "hello", "--port", f"http:{listen}", "--outbound", "proxy", "--",
        *app_argv("proxy", out, listen, cluster_ip, pod_ip, http_port, hello.namespace))
    assert code == 0, b.stderr
    assert_reached(json.loads(out.read_text()), orders_says(orders))


def test_forward_rewrites_service_variables(make_workload: Any, tmp_path: Path) -> None:
    hello = make_workload("hello", replicas=1)
    orders, cluster_ip, pod_ip, http_port, _ = make_orders(make_workload)
    out, listen, local = tmp_path / "r.json", free_port(), free_port()
    code, b = hello.run_bridge(
        "swap", "hello", "--port", f"http:{listen}", "--outbound", "none",
        "--forward", f"orders:80:{local}", "--",
        *app_argv("forward", out, listen, cluster_ip, pod_ip, http_port, hello.namespace))
    assert code == 0, b.stderr
    r = json.loads(out.read_text())
    assert r["env_host"] == "127.0.0.1"
    assert r["env"] == orders_says(orders)
    assert f"forwarding 127.0.0.1:{local} -> orders:80" in b.stderr


@pytest.mark.only_on("local", why="the CLI's error, before any write")
def test_inject_without_torsocks_is_a_clear_error(make_workload: Any, tmp_path: Path) -> None:
    hello = make_workload("hello", replicas=1)
    empty = tmp_path / "bin"
    empty.mkdir()
    code, b = hello.run_bridge("swap", "hello", "--outbound", "inject", "--", "true",
                               env={"PATH": str(empty)})
    assert code != 0
    assert "--outbound inject needs torsocks" in b.stderr
    assert "nothing was changed" in b.stderr
    assert hello.our_annotations() == {} and hello.proxies() == []


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
@pytest.mark.only_on("local", why="the laptop's users and the local proxy's credentials")
def test_another_user_cannot_use_the_proxy(make_workload: Any, tmp_path: Path) -> None:
    hello = make_workload("hello", replicas=1)
    orders, *_ = make_orders(make_workload)
    listen, env_file = free_port(), tmp_path / "hello.env"
    os.chmod(tmp_path, 0o755)
    b = hello.bridge("swap", "hello", "--port", f"http:{listen}", "--outbound", "inject",
                     "--env-file", str(env_file))
    b.wait_for("attached")
    env = envmod.parse_dotenv(env_file.read_text())
    port = env["ALL_PROXY"].rsplit(":", 1)[1]
    # The owner, with the session's credentials, gets through (so the refusals below are the
    # credentials' doing, not a dead proxy).
    ok = subprocess.run(["curl", "-sS", "--max-time", "30", "--proxy", env["ALL_PROXY"],
                         "http://orders/"], capture_output=True, text=True, timeout=60)
    assert ok.stdout.strip() == orders_says(orders), ok.stderr
    nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    for proxy in (f"socks5h://127.0.0.1:{port}", f"http://127.0.0.1:{port}",
                  f"socks5h://guess:guess@127.0.0.1:{port}"):
        r = subprocess.run([*nobody, "curl", "-sS", "--max-time", "30", "--proxy", proxy,
                            "http://orders/"], capture_output=True, text=True, timeout=60)
        assert "cluster" not in r.stdout, (proxy, r.stdout)
        assert r.returncode != 0 or "407" in r.stdout or "credentials" in r.stdout, proxy
    # Nor can it read the session's torsocks configuration (it holds the password).
    r = subprocess.run([*nobody, "cat", env["TORSOCKS_CONF_FILE"]], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "SOCKS5Password" not in r.stdout
    b.signal(2)
    assert b.wait() == 0, b.stderr
