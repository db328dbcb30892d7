"""The pod's environment, handed to the developer: for the command (overlaid on this shell's),
and as files (--env-file in --env-syntax, --env-json, or `.bridge/NAME.env` in attach mode).

Hook point: `child_environment` is where the command's environment is made (add variables
there); `write_files` is where the environment is written (add a format there).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

from bridge.cleanup import CleanupStack
from bridge.local import env as envmod
from bridge.local import envsyntax
from bridge.local.ide import envfile as ide_envfile
from bridge.progress import Progress

SESSION_VAR = "K8S_BRIDGE_SESSION"  # in the command's environment: which session started it (not
# BRIDGE_*: those are the sidecar's settings, never passed on)


def output_path_problem(option: str, path: str) -> str | None:
    """Why `path` (given to `option`) cannot be written, or None. Checked before anything is
    changed, so a typo does not cost a whole swap and restore."""
    p = Path(path)
    parent = p.parent
    if p.is_dir():
        return f"{option} {path} is a directory"
    if not parent.is_dir():
        return f"{option} {path}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{option} {path}: directory {parent} is not writable"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{option} {path} is not writable"
    return None


def child_environment(pod_env: Mapping[str, str], session: str, *, allow: Iterable[str] = (),
                      own: Mapping[str, str] | None = None) -> dict[str, str]:
    """The command's environment: this shell's, overlaid with the pod's (minus what
    `env.hold_back` holds back unless `allow`ed), plus bridge's `own` variables (never the
    pod's, never filtered), marked with the session (so `bridge restore` can tell a leftover
    process of this session)."""
    child_env = dict(envmod.overlay(os.environ, pod_env, allow))
    child_env.update(own or {})
    child_env[SESSION_VAR] = session
    return child_env


COMMAND = "YOUR_COMMAND"  # what the user puts in a hint's place


def scoped_run(syntax: str, env_file: str) -> str:
    """How to start one command with the variables of `env_file` (written in `syntax`) so that
    they reach that command alone: the shell it is typed in keeps none of them. (`set -a; .
    FILE; set +a; cmd` leaves LD_PRELOAD and the proxy variables in the shell, and every later
    program there goes through a session that has ended.) Each form is checked against its
    real reader in the tests; `COMMAND` stands for the user's command."""
    if syntax == "sh":  # sh, dash, bash, zsh, ksh: a subshell, the command exec'd in it
        return f"(. {shlex.quote(_with_dir(env_file))} && exec {COMMAND})"
    if syntax == "dotenv":
        # Not `set -a; . FILE`: a shell does not read dotenv's quoting, and a bare value with
        # `;` or `|` in it would run as a command. python-dotenv's own runner reads it exactly.
        return f"dotenv -f {shlex.quote(env_file)} run -- {COMMAND}"
    if syntax == "fish":  # `begin; ...; end` does not scope `set -gx`: another fish does
        inner = _fish_quote(env_file)
        return f"fish -c {_fish_quote(f'source {inner}; and exec {COMMAND}')}"
    if syntax == "csh":  # csh, tcsh: a subshell
        return f"( source {_csh_quote(env_file)} && exec {COMMAND} )"
    if syntax == "powershell":  # $env: is the process's: another PowerShell
        inner = "'" + _with_dir(env_file).replace("'", "''") + "'"
        script = f". {inner}; {COMMAND}; exit $LASTEXITCODE"
        return "pwsh -NoProfile -Command '" + script.replace("'", "''") + "'"
    if syntax == "cmd":  # `set` is the session's: another cmd
        return f'cmd /c "call "{env_file}" && {COMMAND}"'
    if syntax == "compose":  # the variables live in the container only
        return f"docker compose -f compose.yaml -f {shlex.quote(env_file)} up"
    # json: no shell reads it; Python puts it in the command's environment and runs it
    loader = ("import json,os,sys; e=json.load(open(sys.argv[1])); "
              "os.execvpe(sys.argv[2], sys.argv[2:], {**os.environ, **e})")
    return f"python3 -c {shlex.quote(loader)} {shlex.quote(env_file)} {COMMAND}"


def _with_dir(path: str) -> str:
    """`path` with a directory part, so `.` (and PowerShell's `.`) do not search PATH."""
    return path if "/" in path or "\\" in path else "./" + path


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _csh_quote(text: str) -> str:
    # single quotes hold everything in csh but `!` (history) and a newline
    return "'" + text.replace("'", "'\\''").replace("!", "\\!") + "'"


def write_files(pod_env: Mapping[str, str], *, own: Mapping[str, str] | None = None,
                allow: Iterable[str] = (), syntax: str = envsyntax.DEFAULT_SYNTAX,
                env_file: str | None, env_json: str | None, attach: bool, stem: str,
                stack: CleanupStack, progress: Progress) -> str | None:
    """Write the environment where asked (in attach mode at least to `.bridge/STEM.env`
    under the current directory, removed at the end); the env file's path, if any.

    The pod's variables are filtered (`env.hold_back`: held-back ones are said once and
    written commented out); bridge's `own` variables join after the filter."""
    exported, held = envmod.hold_back(pod_env, allow)
    exported.update(own or {})
    if held:
        progress.warn(envmod.held_back_line(held))
    if attach and not env_file:  # a stable path an IDE configuration can name once
        default = ide_envfile.default_env_file(Path.cwd(), stem, syntax)
        ide_envfile.prepare_dir(default.parent)  # created 0700, git-ignored
        env_file = str(default)

        async def remove() -> None:
            default.unlink(missing_ok=True)

        stack.push("removing the environment file", remove)
    if env_file:
        rendered = envsyntax.render(syntax, exported, held, service=stem)
        envmod.write_private(Path(env_file), rendered.text)
        progress.info(f"wrote the pod's environment to {env_file}")
        if rendered.left_out:
            progress.warn(f"left out of the env file ({syntax} syntax): " + ", ".join(
                f"{k} ({why})" for k, why in sorted(rendered.left_out.items())))
    if env_json:
        envmod.write_json(env_json, exported)
        progress.info(f"wrote the pod's environment to {env_json}")
    return env_file
