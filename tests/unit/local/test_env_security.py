"""The pod's environment never loads code into, or redirects, the laptop's command (issue 13,
item 3): loader, interpreter, shell-hook and proxy variables are held back unless allowed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
    assert "# BASH_ENV='/x\n# id'" in text and "# LD_PRELOAD='/e.so'" in text
    assert env.parse_dotenv(text) == {"A": "1"}  # read back: the held ones stay comments
    sourced = subprocess.run(["bash", "-c", f"set -a; . {path}; env"], capture_output=True,
                             text=True, env={"PATH": os.environ["PATH"]}, check=True).stdout
    assert "LD_PRELOAD" not in sourced and "A=1" in sourced
