"""Which part of this process's environment Kubernetes built for the pod.

The `env` command must return what the copied container spec produced (env,
envFrom, service links, HOSTNAME...), not what the sidecar's own image or its
Python added: the agent hands that environment to the developer's process, where
the image's PATH or a coerced LC_CTYPE would be wrong.

- The image records its own variables at build time (`python -m sidecar.podenv
  record FILE`, see the Dockerfile); a variable with the same name *and* value is
  the image's, so a spec that overrides PATH still wins.
- Python's C-locale coercion (PEP 538) adds LC_CTYPE when the locale is C/POSIX.
- The variables the sidecar's own process must not run with (LD_PRELOAD, PYTHONPATH...; the
  plan's SIDECAR_SHIELDED) are blank here, the app's value under `protocol.SHIELD_PREFIX`:
  served under the variable's own name, and not at all when it is the literal `$(NAME)` the
  kubelet leaves for a name the app does not have.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from sidecar import protocol

log = logging.getLogger("sidecar")

IMAGE_ENV_FILE = Path(__file__).with_name("image-env.json")

# Set by the container runtime per container, not by the image: never recorded.
_RUNTIME_NAMES = frozenset({"HOSTNAME", "HOME"})
_COERCION_TARGETS = frozenset({"C.UTF-8", "C.utf8", "UTF-8"})


def load_image_env(path: Path = IMAGE_ENV_FILE) -> dict[str, str]:
    """The image's recorded variables; {} when there is no record (not built as an image)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the image environment record %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring the image environment record %s: not a JSON object", path)
        return {}
    return {str(k): str(v) for k, v in data.items()}


def locale_was_coerced(environ: Mapping[str, str]) -> bool:
    """Whether LC_CTYPE is (almost certainly) Python's PEP 538 addition, not the pod's."""
    if "LC_ALL" in environ or environ.get("LC_CTYPE") not in _COERCION_TARGETS:
        return False
    return environ.get("LANG", "C") in ("", "C", "POSIX")


def pod_environment(environ: Mapping[str, str], image_env: Mapping[str, str]) -> dict[str, str]:
    """The environment minus BRIDGE_* settings, the image's own variables and coercion."""
    coerced = locale_was_coerced(environ)
    shielded = {name[len(protocol.SHIELD_PREFIX):]: value for name, value in environ.items()
                if name.startswith(protocol.SHIELD_PREFIX)}
    env = {
        name: value
        for name, value in environ.items()
        if not name.startswith(protocol.SETTINGS_PREFIX)
        and name not in shielded
        and image_env.get(name) != value
        and not (coerced and name == "LC_CTYPE")
    }
    for name, value in shielded.items():
        if value != f"$({name})" and image_env.get(name) != value:
            env[name] = value
    return env


def record(path: Path, environ: Mapping[str, str]) -> None:
    """Write the image's own variables (build time)."""
    own = {k: v for k, v in environ.items() if k not in _RUNTIME_NAMES}
    path.write_text(json.dumps(own, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "record":
        print("usage: python -m sidecar.podenv record FILE", file=sys.stderr)
        return 2
    record(Path(argv[1]), os.environ)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
