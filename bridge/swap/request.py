"""What one `bridge swap` was asked to do, checked before anything touches the cluster.

`build(options)` turns the CLI's options (`SwapOptions`) into a frozen `SwapRequest`: every
check that needs no cluster runs here (the target's and the ports' syntax, the env files'
paths and syntax, the mount mode and directory, the outbound mode and torsocks, --forward,
and that the command exists as the child will look it up). A user error is one line
(`NothingChanged`) saying nothing was changed. The session takes the request and asks it
nothing twice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import BridgeError, NothingChanged
from bridge.local import envout, envsyntax
from bridge.model import target
from bridge.swap.options import SwapOptions
from bridge.transport import outbound as outbound_mod

OUTBOUND_MODES = ("inject", "proxy", "none")
MOUNT_MODES = ("auto", "copy", "live")


@dataclass(frozen=True)
class SwapRequest:
    """The validated request: the options as given (frozen) and what they were found to ask
    for beyond the swap itself."""

    options: SwapOptions
    command: tuple[str, ...]  # () in attach mode
    outbound: outbound_mod.Mode
    forwards: tuple[outbound_mod.Forward, ...]
    files_mode: str | None  # "live" | "copy"; None: no files asked for
    files_note: str  # what to say when the files are provided
    hints: tuple[str, ...]  # warnings to show (e.g. no torsocks: proxy variables only)

    @property
    def attach(self) -> bool:
        """No command: bridge holds the swap and the developer starts the service."""
        return not self.command

    @property
    def direct_tcpip(self) -> bool:
        """Whether the sidecar must open connections from the pod: for the outbound modes, and
        for --forward listeners even with --outbound none."""
        return self.outbound is not outbound_mod.Mode.NONE or bool(self.forwards)


def build(o: SwapOptions) -> SwapRequest:
    """The request for `o`; NothingChanged (one line) for the first thing that is wrong."""
    try:
        return _build(o)
    except NothingChanged:
        raise
    except BridgeError as e:
        raise NothingChanged(_nothing_changed(str(e))) from None


def _build(o: SwapOptions) -> SwapRequest:
    target.parse_target(o.target)
    for spec in o.ports:
        target.parse_port_spec(spec)
    if o.env_syntax not in envsyntax.SYNTAXES:
        raise BridgeError(f"--env-syntax {o.env_syntax!r}: expected one of "
                          + ", ".join(envsyntax.SYNTAXES))
    for option, path in (("--env-file", o.env_file), ("--env-json", o.env_json)):
        problem = path and envout.output_path_problem(option, path)
        if problem:
            raise BridgeError(problem)
    if o.outbound is not None and o.outbound not in OUTBOUND_MODES:
        raise BridgeError(f"--outbound {o.outbound!r}: expected one of "
                          + ", ".join(OUTBOUND_MODES))
    if o.mount_mode is not None and o.mount_mode not in MOUNT_MODES:
        raise BridgeError(f"--mount-mode {o.mount_mode!r}: expected one of "
                          + ", ".join(MOUNT_MODES))
    if not o.timeout > 0:
        raise BridgeError(f"--timeout {o.timeout:g}: must be more than 0 seconds")
    mode, hint = outbound_mod.choose_mode(o.outbound, outbound_mod.find_torsocks())
    forwards = tuple(outbound_mod.parse_forward(f) for f in o.forwards)
    files_mode, files_note = files_asked(o)
    command = tuple(o.command)  # last: what it runs under (torsocks) is said first
    if command:
        problem = command_problem(command, os.environ.get("PATH", os.defpath))
        if problem:
            raise BridgeError(problem)
    return SwapRequest(o, command, mode, forwards, files_mode, files_note,
                       (hint,) if hint else ())


def command_problem(argv: Sequence[str], path: str) -> str | None:
    """Why `argv[0]` cannot be run by the child, or None. A name without a slash is looked up
    on `path` (the command keeps this shell's PATH: the pod's is never used), a path must be
    an executable file."""
    program = argv[0]
    if not program:
        return "the command is an empty string"
    if "/" in program:
        if os.path.isdir(program):
            return f"the command {program} is a directory"
        if not os.path.exists(program):
            return f"the command {program} does not exist"
        if not os.access(program, os.X_OK):
            return f"the command {program} is not executable"
        return None
    if shutil.which(program, path=path) is None:
        return f"the command {program!r} was not found on PATH"
    return None


def files_asked(o: SwapOptions) -> tuple[str | None, str]:
    """(mode, what to say) when the pod's files were asked for (--mount, --mount-mode,
    --mount-rw), else (None, ""). BridgeError for a bad --mount DIR or an impossible live
    mode."""
    from bridge.local import mounts

    if not (o.mount_dir or o.mount_mode or o.mount_rw):
        return None, ""
    problem = o.mount_dir and mounts.root_problem(o.mount_dir)
    if problem:
        raise NothingChanged(f"{problem}; nothing was changed")
    return mounts.choose_mode(o.mount_mode or "auto", mounts.live_problem())


def _nothing_changed(message: str) -> str:
    return message if "nothing was changed" in message else f"{message}; nothing was changed"
