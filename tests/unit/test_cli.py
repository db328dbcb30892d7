"""The `bridge` command without a cluster: usage errors, kubeconfig errors, an unreachable API.

Every error is one line on stderr, says what was wrong and exits non-zero.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import textwrap
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


# -- start-up: nothing heavy before a command runs (issue 18) ---------------------------------

HEAVY = ("kubernetes", "aiohttp", "asyncssh", "cryptography", "anyio", "yaml")


def imported_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """The heavy modules in sys.modules after running `code` in a fresh interpreter."""
    probe = (f"import sys\ntry:\n{textwrap.indent(code, '    ')}\nexcept SystemExit:\n    pass\n"
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.__stderr__)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", **(env or {})})
    return r.stderr.split()


def test_importing_the_cli_imports_no_heavy_dependency() -> None:
    assert imported_after("import bridge.cli") == []
    assert imported_after("import bridge.swap.session") != []  # the probe does see them


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["swap", "--help"],
                                  ["ide", "vscode", "--help"]])
def test_help_and_version_import_no_heavy_dependency(argv: list[str]) -> None:
    assert imported_after(f"from bridge.cli import main\nmain({argv!r})") == []


def test_completion_imports_no_heavy_dependency() -> None:
    env = {"_BRIDGE_COMPLETE": "bash_complete", "COMP_WORDS": "bridge sw", "COMP_CWORD": "1"}
    assert imported_after("from bridge.cli import main\nmain([])", env) == []
    r = subprocess.run([sys.executable, "-m", "bridge.cli"], capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin", **env})
    assert r.stdout.split() == ["plain,swap"]


def test_version_names_bridge_and_its_sidecar_image() -> None:
    from bridge import __version__
    from sidecar import protocol

    r = bridge("--version")
    assert r.returncode == 0
    assert r.stdout.splitlines() == [f"bridge {__version__}",
                                     f"sidecar image: {protocol.DEFAULT_IMAGE}"]


# -- only bridge speaks on stderr (issue 18) --------------------------------------------------

# Stands for a dependency that warns when imported (asyncssh under cryptography 51 does): on
# the first import of `kubernetes`, one warning attributed to the kubernetes package and one to
# a bridge module. Loaded by site at start-up, before bridge's main() runs.
NOISY_SITECUSTOMIZE = '''
import sys, warnings

class Noisy:
    def find_spec(self, name, path=None, target=None):
        if name == "kubernetes":
            sys.meta_path.remove(self)
            for module in ("kubernetes", "bridge.kube.client"):
                exec("import warnings; warnings.warn('noise from ' + __name__, UserWarning)",
                     {"__name__": module})
        return None

sys.meta_path.insert(0, Noisy())
'''


@pytest.fixture
def noisy(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NOISY_SITECUSTOMIZE)
    return {"PYTHONPATH": str(tmp_path / "site")}


@pytest.mark.parametrize("args", [["swap", "hello", "--", "true"], ["status"], ["doctor"]])
def test_a_dependencys_warning_does_not_reach_stderr(args: list[str], kubeconfig: Path,
                                                     noisy: dict[str, str]) -> None:
    r = bridge("--kubeconfig", str(kubeconfig), *args, env=noisy)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert "noise from kubernetes" not in r.stderr
    # bridge's own warning stays; every other line is bridge's
    assert any("noise from bridge.kube.client" in ln for ln in lines), r.stderr
    assert all(ln.startswith("bridge:") or "noise from bridge" in ln or ln.startswith("  ")
               for ln in lines), r.stderr


def test_the_users_warnings_option_is_respected(kubeconfig: Path, noisy: dict[str, str]) -> None:
    r = bridge("--kubeconfig", str(kubeconfig), "status",
               env={**noisy, "PYTHONWARNINGS": "default"})
    assert "noise from kubernetes" in r.stderr


# -- issue 21: `swap NAME --` and `ide vscode TARGET -n NS` ------------------------------------

def test_nothing_after_dashdash_is_a_usage_error(kubeconfig: Path) -> None:
    for args in (["swap", "hello", "--"], ["swap", "hello", "-p", "8080", "--"]):
        r = bridge("--kubeconfig", str(kubeconfig), *args)
        assert r.returncode == 2, r.stderr
        assert [ln for ln in r.stderr.splitlines() if ln.startswith("Error")] == [
            "Error: nothing after `--`: give the command to run (or leave out `--` for attach "
            "mode); nothing was changed"]
        assert "cannot reach" not in r.stderr  # refused before connecting
    # `--` itself as the command's first word is still a command (looked up on PATH, before
    # anything is contacted)
    r = bridge("--kubeconfig", str(kubeconfig), "swap", "hello", "--", "--")
    assert "the command '--' was not found on PATH" in one_error_line(r)


def test_ide_vscode_takes_the_common_options_after_the_target(tmp_path: Path) -> None:
    import json

    kc = tmp_path / "kc"
    r = bridge("ide", "vscode", "greeter", "--workspace", str(tmp_path), "-n", "shop",
               "--context", "dev", "--kubeconfig", str(kc), "-v", "--log-file", "b.log")
    assert r.returncode == 0, r.stderr
    tasks = json.loads((tmp_path / ".vscode" / "tasks.json").read_text())
    args = tasks["tasks"][0]["args"]
    assert args[args.index("--namespace") + 1] == "shop"
    assert args[args.index("--context") + 1] == "dev"
    assert args[args.index("--kubeconfig") + 1] == str(kc)
    assert args[args.index("--log-file") + 1] == str(Path("b.log").resolve())
    assert "--verbose" in args
    # after the subcommand wins over before it, as for every subcommand
    r = bridge("-n", "default", "ide", "vscode", "greeter", "-n", "shop", "-q",
               "--workspace", str(tmp_path))
    assert (r.returncode, r.stderr) == (0, "")
    args = json.loads((tmp_path / ".vscode" / "tasks.json").read_text())["tasks"][0]["args"]
    assert args[args.index("--namespace") + 1] == "shop"
