"""`bridge ide vscode TARGET`: a debug configuration that swaps TARGET while you debug.

Three pieces, merged into `.vscode/tasks.json` and `.vscode/launch.json` (JSONC: the user's
other entries and comments are kept; ours are replaced by name on a re-run):

- a background task `bridge: swap NAME` running `bridge swap TARGET --env-file FILE`, with
  the absolute path of the bridge that wrote it (VS Code's PATH need not have bridge on it: a
  pipx install, a project venv that is not activated). VS Code waits for a background
  pre-launch task until its problem matcher's background `endsPattern` matches a line; the
  matcher is `activeOnStart` (busy from the task's start, as if `beginsPattern` had matched),
  and `endsPattern` is bridge's "attached" line, printed once the traffic is handed over and
  the env file is written. `beginsPattern` is the line that starts a swap, printed once: VS
  Code matches it before `endsPattern` on every line (problemCollectors.ts: tryBegin ||
  tryFinish), so a pattern matching any later line would make the task busy again. VS Code
  runs the pre-launch task before the debugger extension resolves the configuration
  (debugService: preLaunchTask, then resolveDebugConfigurationWithSubstitutedVariables, which
  is where the Python debugger reads `envFile`), so the file read is the one this swap wrote.
- a debugpy launch configuration `bridge: debug NAME` with that `envFile`, the task as
  `preLaunchTask` and
- a `postDebugTask` `bridge: end swap NAME` that terminates the swap task (through the
  `workbench.action.tasks.terminate` command): bridge gets the signal and restores the cluster.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError
from bridge.local.ide import envfile, jsonc

TASKS_SKELETON = {"version": "2.0.0"}
# The line a swap starts with (bridge.swap.session: "swapping deployment/NAME (container ...").
SWAP_BEGINS_PATTERN = r"^bridge: swapping deployment/"
LAUNCH_SKELETON = {"version": "0.2.0"}


@dataclass(frozen=True)
class Options:
    target: str  # as given to `bridge swap` (NAME, deployment/NAME, svc/NAME)
    name: str  # the name used for labels and the env file (TARGET without its kind)
    program: str | None = None  # a script to debug, or
    module: str | None = None  # a module (python -m)
    args: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    swap_args: tuple[str, ...] = ()  # more `bridge swap` options (-n NS, --context ...)
    bridge: tuple[str, ...] = field(default_factory=lambda: running_bridge())  # runs bridge


def running_bridge(argv0: str | None = None, executable: str | None = None
                   ) -> tuple[str, ...]:
    """The command that runs this very bridge, by absolute path: its entry-point script (what
    sys.argv[0] names when bridge was started as `bridge`, from a venv or pipx), else this
    interpreter with `-m bridge.cli` (started as `python -m bridge.cli`, or embedded)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    path = os.path.abspath(argv0) if argv0 else ""
    name = os.path.basename(path)
    if name.startswith("bridge") and not name.endswith(".py") and os.path.isfile(path) \
            and os.access(path, os.X_OK):
        return (path,)
    return (os.path.abspath(executable or sys.executable), "-m", "bridge.cli")


def name_of_target(target: str) -> str:
    """`svc/hello` -> `hello`: labels and the env file are named after this."""
    name = target.split("/", 1)[-1]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
        raise BridgeError(f"{target!r} does not name a Deployment or Service; nothing written")
    return name


def env_file(opts: Options) -> str:
    """The env file, relative to the workspace folder as VS Code substitutes it."""
    return "${workspaceFolder}/" + envfile.BRIDGE_DIR + "/" + opts.name + \
        envfile.SUFFIXES["dotenv"]


def swap_label(opts: Options) -> str:
    return f"bridge: swap {opts.name}"


def end_label(opts: Options) -> str:
    return f"bridge: end swap {opts.name}"


def launch_name(opts: Options) -> str:
    return f"bridge: debug {opts.name}"


def input_id(opts: Options) -> str:
    return f"bridge-end-swap-{opts.name}"


def swap_task(opts: Options) -> dict[str, Any]:
    args = ["swap", opts.target, "--env-file", env_file(opts), "--env-syntax", "dotenv"]
    for port in opts.ports:
        args += ["--port", port]
    return {
        "label": swap_label(opts),
        "detail": "Swap the cluster's traffic for this machine until the debug session ends",
        "type": "process",
        "command": opts.bridge[0],
        "args": [*opts.bridge[1:], *args, *opts.swap_args],
        "options": {"cwd": "${workspaceFolder}"},
        "isBackground": True,
        "problemMatcher": {
            "owner": "bridge",
            "pattern": {"regexp": r"^bridge: error: (.*)$", "file": 1, "message": 1},
            "background": {
                "activeOnStart": True,
                "beginsPattern": SWAP_BEGINS_PATTERN,
                "endsPattern": envfile.ATTACHED_LINE_PATTERN,
            },
        },
    }


def end_task(opts: Options) -> dict[str, Any]:
    return {
        "label": end_label(opts),
        "detail": "End the swap (bridge restores the cluster)",
        "type": "shell",
        "command": "echo ${input:" + input_id(opts) + "}",
        "problemMatcher": [],
    }


def terminate_input(opts: Options) -> dict[str, Any]:
    return {"id": input_id(opts), "type": "command",
            "command": "workbench.action.tasks.terminate", "args": swap_label(opts)}


def launch_config(opts: Options) -> dict[str, Any]:
    config: dict[str, Any] = {"name": launch_name(opts), "type": "debugpy", "request": "launch"}
    if opts.module:
        config["module"] = opts.module
    elif opts.program and not opts.program.startswith(("/", "${")):
        config["program"] = "${workspaceFolder}/" + opts.program
    else:
        config["program"] = opts.program or "${file}"
    if opts.args:
        config["args"] = list(opts.args)
    config.update({
        "envFile": env_file(opts),
        "cwd": "${workspaceFolder}",
        "console": "integratedTerminal",
        "justMyCode": True,
        "preLaunchTask": swap_label(opts),
        "postDebugTask": end_label(opts),
    })
    return config


def merged_tasks(text: str, opts: Options) -> str:
    text = jsonc.upsert(text, "tasks", "label", swap_task(opts), TASKS_SKELETON)
    text = jsonc.upsert(text, "tasks", "label", end_task(opts), TASKS_SKELETON)
    return jsonc.upsert(text, "inputs", "id", terminate_input(opts), TASKS_SKELETON)


def merged_launch(text: str, opts: Options) -> str:
    return jsonc.upsert(text, "configurations", "name", launch_config(opts), LAUNCH_SKELETON)


def write(workspace: Path, opts: Options) -> list[Path]:
    """Merge our entries into the workspace's .vscode files; the paths written. Both files are
    merged in memory first, so a file that cannot be parsed leaves both as they were."""
    folder = workspace / ".vscode"
    plans: list[tuple[Path, str]] = []
    for name, merge in (("tasks.json", merged_tasks), ("launch.json", merged_launch)):
        path = folder / name
        try:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
        except OSError as e:
            raise BridgeError(f"cannot read {path}: {e.strerror}; nothing was written") from None
        try:
            plans.append((path, merge(old, opts)))
        except jsonc.JsoncError as e:
            raise BridgeError(f"{path} is not valid JSON with comments ({e}); "
                              "nothing was written") from None
    envfile.prepare_dir(workspace / envfile.BRIDGE_DIR)  # `bridge swap --env-file` needs it
    try:
        folder.mkdir(exist_ok=True)
        for path, text in plans:
            tmp = path.with_name(f".{path.name}.bridge-tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    except OSError as e:
        raise BridgeError(f"cannot write {folder}: {e.strerror}") from None
    return [path for path, _ in plans]
