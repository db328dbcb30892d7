"""The fixed command set of the sidecar, as pure functions of data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar import protocol

EXIT_REFUSED = 1
EXIT_UNKNOWN_COMMAND = 127


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    exit_status: int


def visible_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus the sidecar's own settings."""
    return {
        name: value
        for name, value in sorted(environ.items())
        if not name.startswith(protocol.SETTINGS_PREFIX)
    }


def _available() -> str:
    return ", ".join(protocol.COMMANDS)


def run(command: str, environ: Mapping[str, str]) -> Result:
    """Run one exec request. Unknown commands are refused with a message on stderr."""
    name = command.strip()
    if name == protocol.CMD_ENV:
        return Result(json.dumps(visible_environment(environ)) + "\n", "", 0)
    if name == protocol.CMD_WITHDRAW:  # the server applies it (registry.withdraw)
        return Result(json.dumps({"ready": False}) + "\n", "", 0)
    if name == protocol.CMD_VERSION:
        body = {"sidecar": protocol.SIDECAR_VERSION, "protocol": protocol.PROTOCOL_VERSION}
        return Result(json.dumps(body) + "\n", "", 0)
    shown = name if len(name) <= 80 else name[:77] + "..."
    return Result(
        "",
        f"bridge sidecar: unknown command {shown!r}; this server runs only: {_available()}\n",
        EXIT_UNKNOWN_COMMAND,
    )


def refusal(what: str) -> Result:
    """A shell or subsystem request: accepted only to say clearly that it is not offered."""
    return Result(
        "",
        f"bridge sidecar: {what} is not available; this server runs only: {_available()}\n",
        EXIT_REFUSED,
    )
