"""The pod's environment, handed to the developer: for the command (overlaid on this shell's),
and as files (--env-file, --env-json, or a temporary file in attach mode).

Hook point: `child_environment` is where the command's environment is made (add variables
there); `write_files` is where the environment is written (add a format there).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bridge import env as envmod
from bridge.cleanup import CleanupStack
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


def child_environment(pod_env: Mapping[str, str], session: str) -> dict[str, str]:
    """The command's environment: this shell's, overlaid with the pod's, marked with the session
    (so `bridge restore` can tell a leftover process of this session)."""
    child_env = dict(envmod.overlay(os.environ, pod_env))
    child_env[SESSION_VAR] = session
    return child_env


def write_files(pod_env: Mapping[str, str], *, env_file: str | None, env_json: str | None,
                attach: bool, stem: str, session: str, stack: CleanupStack,
                progress: Progress) -> str | None:
    """Write the environment where asked (in attach mode at least to a temporary dotenv file,
    removed at the end); the dotenv file's path, if any."""
    exported = {k: v for k, v in pod_env.items() if not envmod.is_local(k)}
    if attach and not env_file:
        tmp = tempfile.mkdtemp(prefix=f"bridge-{session}-")
        env_file = str(Path(tmp) / f"{stem}.env")

        async def remove() -> None:
            shutil.rmtree(tmp, ignore_errors=True)

        stack.push("removing the environment file", remove)
    if env_file:
        skipped = envmod.write_dotenv(env_file, exported)
        progress.info(f"wrote the pod's environment to {env_file}")
        if skipped:
            progress.warn("left out of the env file (not shell names): " + ", ".join(skipped))
    if env_json:
        envmod.write_json(env_json, exported)
        progress.info(f"wrote the pod's environment to {env_json}")
    return env_file
