"""The pod's environment never loads code into, or redirects, the laptop's command (issue 13,
item 3): loader, interpreter, shell-hook and proxy variables are held back unless allowed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bridge.local import env

ATTACK = {
    "BASH_ENV": "/tmp/evil.sh", "ENV": "/tmp/evil.sh", "LD_PRELOAD": "/tmp/evil.so",
    "LD_LIBRARY_PATH": "/tmp", "DYLD_INSERT_LIBRARIES": "/tmp/evil.dylib",
    "PYTHONPATH": "/tmp", "PYTHONSTARTUP": "/tmp/x.py", "PYTHONHOME": "/tmp",
    "NODE_OPTIONS": "--require /tmp/x.js", "PERL5OPT": "-Mevil", "PERL5LIB": "/tmp",
    "RUBYOPT": "-revil", "RUBYLIB": "/tmp", "JAVA_TOOL_OPTIONS": "-javaagent:/tmp/a.jar",
    "_JAVA_OPTIONS": "-javaagent:/tmp/a.jar", "JDK_JAVA_OPTIONS": "-javaagent:/tmp/a.jar",
    "GIT_SSH_COMMAND": "touch /tmp/pwned", "GIT_SSH": "/tmp/x", "http_proxy": "http://evil:3128",
    "HTTPS_PROXY": "http://evil:3128", "All_Proxy": "socks5://evil", "no_proxy": "*",
    "BASH_FUNC_ls%%": "() { id; }", "PROMPT_COMMAND": "id", "GLIBC_TUNABLES": "x",
    "OLD_BASH_FUNC": "() { id; }; id",
}
BENIGN = {"NODE_ENV": "production", "PYTHONUNBUFFERED": "1", "DATABASE_URL": "postgres://db",
          "KUBERNETES_SERVICE_HOST": "10.0.0.1", "app.config": "x", "JAVA_VERSION": "21"}


def test_every_reviewed_variable_is_held_back_and_ordinary_ones_kept() -> None:
    kept, held = env.hold_back({**ATTACK, **BENIGN})
    assert held == ATTACK
    assert kept == BENIGN


def test_allowed_by_name_and_laptop_variables_untouched() -> None:
    kept, held = env.hold_back({"LD_LIBRARY_PATH": "/opt/lib", "PATH": "/pod/bin",
                                "BASH_ENV": "x"}, allow=["LD_LIBRARY_PATH"])
    assert kept == {"LD_LIBRARY_PATH": "/opt/lib"}
    assert held == {"BASH_ENV": "x"}  # PATH is the laptop's: neither taken nor reported


def test_overlay_never_takes_a_held_back_variable() -> None:
    local = {"PATH": "/usr/bin", "LD_PRELOAD": ""}
    child = env.overlay(local, ATTACK | BENIGN)
    assert all(child.get(k) == local.get(k) for k in ATTACK)
    assert child["NODE_ENV"] == "production"


def test_bash_env_from_the_pod_does_not_run(tmp_path: Path) -> None:
    """The review's reproduction: a pod's BASH_ENV made the laptop's `bash -c` run a file."""
    marker = tmp_path / "pwned"
    script = tmp_path / "evil.sh"
    script.write_text(f"touch {marker}\n")
    child = env.overlay({"PATH": os.environ["PATH"]}, {"BASH_ENV": str(script)})
    subprocess.run(["bash", "-c", "true"], env=child, check=True)
    assert not marker.exists()


def test_one_line_and_the_env_file_has_them_commented_out(tmp_path: Path) -> None:
    kept, held = env.hold_back({"A": "1", "BASH_ENV": "/x\nid", "LD_PRELOAD": "/e.so"})
    line = env.held_back_line(held)
    assert "\n" not in line and "BASH_ENV" in line and "LD_PRELOAD" in line
    assert "--env-allow" in line
    assert env.held_back_line({}) == ""
    path = tmp_path / "app.env"
    env.write_dotenv(path, kept, held)
    text = path.read_text()
    assert "# BASH_ENV='/x\\nid'\n" in text and "# LD_PRELOAD='/e.so'" in text
    assert env.parse_dotenv(text) == {"A": "1"}  # read back: the held ones stay comments
    sourced = subprocess.run(["bash", "-c", f"set -a; . {path}; env"], capture_output=True,
                             text=True, env={"PATH": os.environ["PATH"]}, check=True).stdout
    assert "LD_PRELOAD" not in sourced and "A=1" in sourced


# Issue 19, item 3: the classification table, one row per family (and names that must pass).
FAMILY_OF = {
    "LD_AUDIT": "dynamic loader and C library", "MALLOC_PERTURB_": "dynamic loader and C library",
    "GCONV_PATH": "dynamic loader and C library", "LOCPATH": "dynamic loader and C library",
    "NLSPATH": "dynamic loader and C library", "HOSTALIASES": "dynamic loader and C library",
    "RES_OPTIONS": "dynamic loader and C library", "GLIBC_TUNABLES": "dynamic loader and C library",
    "BASH_ENV": "shell start-up and hooks", "ENV": "shell start-up and hooks",
    "PS1": "shell start-up and hooks", "PS4": "shell start-up and hooks",
    "IFS": "shell start-up and hooks", "CDPATH": "shell start-up and hooks",
    "PROMPT_COMMAND": "shell start-up and hooks", "BASH_FUNC_x%%": "shell start-up and hooks",
    "MAKEFLAGS": "make", "MFLAGS": "make", "MAKEFILES": "make", "GNUMAKEFLAGS": "make",
    "CC": "compilers and linkers", "CXX": "compilers and linkers", "CPP": "compilers and linkers",
    "LD": "compilers and linkers", "AR": "compilers and linkers", "AS": "compilers and linkers",
    "NM": "compilers and linkers", "RANLIB": "compilers and linkers",
    "STRIP": "compilers and linkers", "CFLAGS": "compilers and linkers",
    "CXXFLAGS": "compilers and linkers", "LDFLAGS": "compilers and linkers",
    "CPPFLAGS": "compilers and linkers", "CGO_LDFLAGS": "compilers and linkers",
    "PKG_CONFIG_PATH": "compilers and linkers", "CONFIG_SITE": "compilers and linkers",
    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER": "cargo and rustc",
    "CARGO_BUILD_RUSTC_WRAPPER": "cargo and rustc", "RUSTC_WRAPPER": "cargo and rustc",
    "RUSTC": "cargo and rustc", "RUSTFLAGS": "cargo and rustc", "RUSTDOCFLAGS": "cargo and rustc",
    "RUSTUP_TOOLCHAIN": "cargo and rustc",
    "GOFLAGS": "go", "GOTOOLCHAIN": "go", "GOPROXY": "go", "GOSUMDB": "go", "GONOSUMDB": "go",
    "GOINSECURE": "go", "GOAUTH": "go", "GOPATH": "go", "GO111MODULE": "go", "GOROOT": "go",
    "LUA_INIT": "lua", "LUA_INIT_5_4": "lua", "LUA_PATH": "lua", "LUA_CPATH_5_3": "lua",
    "PYTHONSTARTUP": "python", "PYTHONPATH": "python", "PYTHONWARNINGS": "python",
    "PIP_INDEX_URL": "python", "UV_INDEX_URL": "python", "VIRTUAL_ENV": "python",
    "NODE_OPTIONS": "node, npm, yarn, pnpm", "npm_config_registry": "node, npm, yarn, pnpm",
    "YARN_RC_FILENAME": "node, npm, yarn, pnpm",
    "PERL5LIB": "perl", "PERLLIB": "perl", "PERL5OPT": "perl",
    "RUBYOPT": "ruby", "RUBYLIB": "ruby", "BUNDLE_GEMFILE": "ruby",
    "JAVA_TOOL_OPTIONS": "java and the jvm", "_JAVA_OPTIONS": "java and the jvm",
    "JDK_JAVA_OPTIONS": "java and the jvm", "CLASSPATH": "java and the jvm",
    "DOTNET_STARTUP_HOOKS": "other interpreters", "PHPRC": "other interpreters",
    "GIT_SSH_COMMAND": "git and other version control",
    "GIT_CONFIG_COUNT": "git and other version control",
    "SSH_ASKPASS": "ssh", "SUDO_ASKPASS": "ssh",
    "EDITOR": "editors, pagers and terminals", "VISUAL": "editors, pagers and terminals",
    "PAGER": "editors, pagers and terminals", "BROWSER": "editors, pagers and terminals",
    "LESSOPEN": "editors, pagers and terminals", "LESSCLOSE": "editors, pagers and terminals",
    "LESS": "editors, pagers and terminals", "TERMINFO": "editors, pagers and terminals",
    "https_proxy": "proxies", "NO_PROXY": "proxies", "all_proxy": "proxies",
    "OPENSSL_CONF": "trust anchors and TLS", "SSL_CERT_FILE": "trust anchors and TLS",
    "SSL_CERT_DIR": "trust anchors and TLS", "CURL_CA_BUNDLE": "trust anchors and TLS",
    "REQUESTS_CA_BUNDLE": "trust anchors and TLS",
    "NODE_EXTRA_CA_CERTS": "node, npm, yarn, pnpm",
    "DOCKER_HOST": "cluster, container and cloud tools",
    "KUBECONFIG": "cluster, container and cloud tools",
    "AWS_CONFIG_FILE": "cluster, container and cloud tools",
    "AWS_ENDPOINT_URL_S3": "cluster, container and cloud tools",
    "GOOGLE_APPLICATION_CREDENTIALS": "cluster, container and cloud tools",
    "CLOUDSDK_PYTHON": "cluster, container and cloud tools",
    "VAULT_ADDR": "cluster, container and cloud tools",
}
APP_SETTINGS = ["DATABASE_URL", "REDIS_HOST", "PORT", "LOG_LEVEL", "FEATURE_FLAGS",
                "NODE_ENV", "RAILS_ENV", "SPRING_PROFILES_ACTIVE", "ASPNETCORE_ENVIRONMENT",
                "DJANGO_SETTINGS_MODULE", "GOOGLE_CLOUD_PROJECT", "AWS_REGION",
                "AWS_ACCESS_KEY_ID", "GOMAXPROCS", "GOMEMLIMIT", "PYTHONUNBUFFERED",
                "JAVA_VERSION", "KUBERNETES_SERVICE_HOST", "HELLO_SERVICE_PORT",
                "HELLO_PORT_80_TCP_ADDR", "MY_POD_IP", "SECRET_KEY", "CACHE_TTL", "API_TOKEN",
                "POSTGRES_PASSWORD", "app.config", "CC_NUMBER", "ARGS", "LDAP_URL"]


@pytest.mark.parametrize("name", sorted(FAMILY_OF))
def test_each_tool_family_is_held_back(name: str) -> None:
    assert env.held_back_family(name) == FAMILY_OF[name]
    kept, held = env.hold_back({name: "x"})
    assert (kept, held) == ({}, {name: "x"}) or env.is_local(name)
    assert env.hold_back({name: "x"}, allow=[name]) == ({name: "x"}, {})


@pytest.mark.parametrize("name", APP_SETTINGS)
def test_app_settings_pass(name: str) -> None:
    assert env.held_back_family(name) is None
    assert env.hold_back({name: "v"}) == ({name: "v"}, {})


def test_an_exported_function_is_held_back_by_its_value() -> None:
    assert env.held_back_family("X", "() { id; }") == "shell start-up and hooks"


def test_held_back_comments_survive_every_line_break(tmp_path: Path) -> None:
    """Issue 19, item 4, for bridge's own dotenv writer: no break ends a held-back comment."""
    from dotenv import dotenv_values

    marker = tmp_path / "pwned"
    held = {f"BASH_ENV{i}": f"x{brk}touch {marker}{brk}INJECTED=1{brk}"
            for i, brk in enumerate(["\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029", "\x1c"])}
    path = tmp_path / "app.env"
    env.write_dotenv(path, {"A": "1"}, held)
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 4 + len(held)  # Python's splitlines knows them all
    assert env.parse_dotenv(text) == {"A": "1"}
    assert dotenv_values(path) == {"A": "1"}
    sourced = subprocess.run(["bash", "-c", f"set -a; . {path}; env"], capture_output=True,
                             text=True, env={"PATH": os.environ["PATH"]}, check=True).stdout
    assert "INJECTED" not in sourced and not marker.exists()
