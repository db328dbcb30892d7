"""Debugging under an IDE, with the debugger VS Code uses (debugpy) driven over DAP.

bridge holds the swap in attach mode and writes the pod's environment to its default place;
the test starts the app under debugpy with that file's environment (read as VS Code's envFile
reads it: the dotenv dialect is one python-dotenv reads the same), attaches as a DAP client,
sets a breakpoint in the request handler and has a pod in the cluster request the Service.
The request stops at the breakpoint, the frame sees the pod's ConfigMap and Secret values,
a minute paused changes nothing for the swap, and on continue the in-cluster client gets the
whole answer. Ctrl-C then restores the cluster (checked by the fixture's teardown).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from bridge.local.ide import vscode
from tests.equipment.dap import DapClient
from tests.helpers import http_server

from .support import REPO, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e,
              pytest.mark.only_on("local", why="the env file, debugpy and DAP are the laptop's; "
                                               "the request through the Service is the plain swap "
                                               "both clusters run (test_swap)")]

# Seconds paused at the breakpoint, as a developer reading the frame would. A long pause (10
# minutes) was run once with BRIDGE_TEST_IDE_PAUSE=600 and --timeout 1200; see the README.
PAUSE = float(os.environ.get("BRIDGE_TEST_IDE_PAUSE", "60"))

PRELUDE = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings}
  data: {LOG_LEVEL: debug}
- apiVersion: v1
  kind: Secret
  metadata: {name: creds}
  stringData:
    password: "s3cr3t 'quoted' $HOME"
    cert: |
      -----BEGIN CERT-----
      line two
      -----END CERT-----
"""

APP = http_server("""
level = os.environ["FROM_CM"]
body = ("laptop says hello; log level " + level + "\\n").encode() * 1000  # BREAK
""")

CLIENT = ("import sys, urllib.request\n"
          "body = urllib.request.urlopen(sys.argv[1], timeout=3600).read().decode()\n"
          "print(len(body), body.splitlines()[0])\n")


def _client_pod(w: Any) -> None:
    w.kubectl("-n", w.namespace, "apply", "--validate=false", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": "python:3.11-slim", "command": ["python3", "-c", CLIENT],
            "args": ["http://$(HELLO_SERVICE_HOST):$(HELLO_SERVICE_PORT)/"]}]}}))


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _phase(w: Any, pod: str) -> str:
    return str((w.get("pod", pod).get("status") or {}).get("phase"))


def test_breakpoint_hit_by_a_request_from_the_cluster(make_workload: Any,
                                                      tmp_path: Path) -> None:
    w = make_workload(prelude=PRELUDE, replicas=1, extra_env=[
        {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                              "key": "LOG_LEVEL"}}},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                               "key": "password"}}},
        {"name": "CERT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "cert"}}},
    ])
    port = free_port()
    b = w.bridge("swap", "hello", "--port", f"http:{port}")
    b.wait_for("attached")

    # The attached line names the default env file, and ends the IDE task's wait.
    attached = [ln for ln in b.stderr.splitlines() if ln.startswith("bridge: attached: ")]
    assert len(attached) == 1, b.stderr
    background = vscode.swap_task(vscode.Options("hello", "hello"))["problemMatcher"][
        "background"]
    lines = b.stderr.splitlines()
    assert [ln for ln in lines if re.search(background["endsPattern"], ln)] == attached
    # the begin pattern: the swap's first line only (the task is busy from its start)
    begun = [i for i, ln in enumerate(lines) if re.search(background["beginsPattern"], ln)]
    assert len(begun) == 1 and begun[0] < lines.index(attached[0]), b.stderr
    env_path = attached[0].split("environment in ", 1)[1].split(";", 1)[0]
    assert env_path == str(REPO / ".bridge" / "hello.env")
    file_env = {k: v or "" for k, v in dotenv_values(env_path).items()}
    assert file_env["FROM_CM"] == "debug" and "HOME" not in file_env

    # The app under debugpy with exactly that environment over the laptop's (as VS Code does).
    app = tmp_path / "app.py"
    app.write_text(APP)
    dap_port = free_port()
    debuggee = subprocess.Popen(
        [sys.executable, "-m", "debugpy", "--listen", f"127.0.0.1:{dap_port}",
         "--wait-for-client", str(app), str(port)],
        env={**os.environ, **file_env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "debuggee.err", "w"))
    w.children.append(debuggee)
    dap = DapClient("127.0.0.1", dap_port)
    try:
        line = next(i for i, ln in enumerate(APP.splitlines(), 1) if "# BREAK" in ln)
        assert dap.attach({str(app): [line]})[str(app)][0]["verified"] is True

        # debugpy lets the app run once configured; it then listens (an empty connection
        # does not reach the handler)
        wait_until("the app to listen", lambda: _accepts(port))
        _client_pod(w)  # a request to the Service, from inside the cluster
        try:
            stopped = dap.event("stopped", timeout=120)
        except AssertionError as e:
            raise AssertionError(f"{e}\nclient pod: {_phase(w, 'client')} "
                                 f"{w.k('logs', 'client', check=False)}\n"
                                 f"bridge:\n{b.stderr}") from None
        assert stopped["reason"] == "breakpoint"
        frame = dap.call("stackTrace", threadId=stopped["threadId"])["stackFrames"][0]
        assert (Path(frame["source"]["path"]).resolve(), frame["line"]) == (app.resolve(), line)
        got = dap.call("evaluate", frameId=frame["id"], context="repl", expression=(
            "(level, os.environ['DB_PASSWORD'], os.environ['CERT'])"))
        assert got["result"] == repr(("debug", "s3cr3t 'quoted' $HOME",
                                      "-----BEGIN CERT-----\nline two\n-----END CERT-----\n"))

        # Paused: the swap stays as it is, the client waits.
        time.sleep(PAUSE)
        assert b.proc.poll() is None, b.stderr
        assert _phase(w, "client") == "Running"
        w.assert_swapped()
        proxy_pods = json.loads(w.k("get", "pods", "-l", "app=hello", "-o", "json"))["items"]
        assert [all(c["status"] == "True" for c in p["status"]["conditions"]
                    if c["type"] == "Ready") for p in proxy_pods] == [True]
        assert "lost" not in b.stderr and "warning" not in b.stderr, b.stderr

        dap.call("continue", threadId=stopped["threadId"])
        wait_until("the client pod to finish",
                   lambda: _phase(w, "client") in ("Succeeded", "Failed"))
        assert _phase(w, "client") == "Succeeded"
        body_len = len("laptop says hello; log level debug\n") * 1000
        assert w.k("logs", "client").strip() == \
            f"{body_len} laptop says hello; log level debug"
    finally:
        dap.close()

    b.signal(signal.SIGINT)
    assert b.wait() == 0, b.stderr
    assert "restored" in b.stderr
    assert not Path(env_path).exists()  # the pod's secrets do not outlive the session
