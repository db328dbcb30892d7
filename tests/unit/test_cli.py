"""The `bridge` command without a cluster: usage errors, kubeconfig errors, an unreachable API.

Every error is one line on stderr, says what was wrong and exits non-zero.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import status
from bridge.model import state

KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: c
  cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}
contexts:
- name: dev
  context: {{cluster: c, user: u, namespace: shop}}
- name: other
  context: {{cluster: c, user: u}}
users:
- name: u
  user: {{token: abc}}
"""


def bridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **(env or {})})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(port=closed_port()))
    return path


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in result.stderr.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_kubeconfig() -> None:
    r = bridge("--kubeconfig", "/nonexistent/kc", "swap", "hello")
    assert r.returncode == 1
    assert one_error_line(r) == ("bridge: error: kubeconfig /nonexistent/kc does not exist; "
                                 "nothing was changed")


def test_no_kubeconfig_at_all() -> None:
    r = bridge("status")
    assert r.returncode == 1
    assert "no kubeconfig: pass --kubeconfig, set KUBECONFIG" in one_error_line(r)


def test_unknown_context_lists_the_known_ones(kubeconfig: Path) -> None:
    r = bridge("swap", "hello", "--kubeconfig", str(kubeconfig), "--context", "prod")
    assert r.returncode == 1
    assert "context 'prod' not found in the kubeconfig (contexts: dev, other)" in \
        one_error_line(r)


def test_unreachable_api_server(kubeconfig: Path) -> None:
    r = bridge("swap", "hello", "--", "true", env={"KUBECONFIG": f"/nope:{kubeconfig}"})
    assert r.returncode == 1
    line = one_error_line(r)
    assert line.startswith("bridge: error: cannot reach the Kubernetes API at https://127.0.0.1:")
    assert line.endswith("; nothing was changed")
    assert r.stdout == ""


def test_unreachable_api_server_for_status_and_restore(kubeconfig: Path) -> None:
    for args in (["status"], ["restore", "hello"], ["restore", "--all"]):
        r = bridge("--kubeconfig", str(kubeconfig), *args)
        assert r.returncode == 1, args
        assert "cannot reach the Kubernetes API" in one_error_line(r)


@pytest.mark.parametrize("args,message", [
    (["restore"], "give a TARGET or --all"),
    (["restore", "hello", "--all"], "give a TARGET or --all"),
    (["swap", "hello", "-v", "-q"], "-v and -q cannot be used together"),
    (["swap"], "Missing argument 'TARGET'"),
    (["swap", "hello", "--timeout", "0"], "--timeout"),
])
def test_usage_errors(args: list[str], message: str, kubeconfig: Path) -> None:
    r = bridge("--kubeconfig", str(kubeconfig), *args)
    assert r.returncode == 2
    assert message in r.stderr


def test_status_table() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    lock = state.Lock("s1", "ann@laptop", 2, "hello-bridge-s1", "8080", t0)
    deps = [{"metadata": {"name": "hello", "annotations": state.encode(lock)}},
            {"metadata": {"name": "plain"}}]
    assert list(status.locked(deps)) == ["hello"]
    rows = status.rows(deps, t0 + dt.timedelta(seconds=30), {"hello": state.Alive(3)})
    assert [(r.deployment, r.owner, r.state, r.heartbeat, r.age) for r in rows] == [
        ("hello", "ann@laptop", "live", "beat within 3s", "30s")]
    # live or stale is what watching showed, whatever the holder's clock said
    later = t0 + dt.timedelta(days=3)
    assert status.rows(deps, later, {"hello": state.Alive(1)})[0].state == "live"
    stale = status.rows(deps, t0, {"hello": state.Stale(61)})[0]
    assert (stale.state, stale.heartbeat) == ("stale", "silent for 1m1s")
    text = status.table(rows).splitlines()
    assert text[0].split() == list(status.HEADERS)
    assert text[1].split()[:3] == ["hello", "ann@laptop", "8080"]
