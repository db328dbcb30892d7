"""What bridge keeps on this machine about its own sessions, under $XDG_STATE_HOME/bridge
(~/.local/state/bridge): a record per session holding a lock, naming the bridge process that
holds it (pid and create time, so a reused pid is not taken for it).

A later bridge on the same machine that finds that session's lock on a Deployment knows at
once whether its holder still runs: a record whose process is gone is a dead session (bridge
was killed, the laptop slept through a crash, the terminal was closed), repaired without
watching its heartbeat for the TTL. Without a record (the session is another machine's or
another user's) the heartbeat decides, as before. The record is written before the lock is
taken and removed once the lock is released; a record left by a killed bridge is the evidence
and stays until that session is repaired.

A record also names the machine it was written on (host name, boot time, pid namespace): a
home directory shared by several machines (NFS) or containers must not make one of them take
another's live bridge for dead because that pid does not run where it looks. Only a record of
this very machine is judged by its pid (of an earlier boot of it: dead); any other says nothing.

Records are this user's own files; the session id that names one comes from a lock on the
cluster, so it is checked to be a plain id before it becomes a file name.

    localstate.register(session, namespace, deployment)   # before the lock is taken
    localstate.ended(session, namespace, deployment)      # -> pid of the dead holder, or None
    localstate.forget(session)                            # once the lock is released
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bridge.local import env

_SESSION_ID = re.compile(r"[0-9a-z][0-9a-z-]{0,62}")
KEEP_UNMATCHED_S = 30 * 86400  # a record whose lock was never found is dropped after this


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "bridge"


def same_process(pid: int, started: float) -> bool:
    """Whether process `pid` runs and is the one created at `started` (not a reused pid)."""
    if pid <= 0:
        return False
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False


@dataclass(frozen=True)
class Machine:
    """Where a pid means something: this host, since this boot, in this pid namespace."""

    host: str
    boot: float  # psutil.boot_time(): seconds since the epoch
    pidns: int  # the inode of /proc/self/ns/pid (0 where there is none)

    @staticmethod
    def here() -> Machine:
        try:
            pidns = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            pidns = 0
        return Machine(socket.gethostname(), psutil.boot_time(), pidns)


BOOT_SLACK_S = 2.0  # boot times computed from uptime may differ by a rounding


@dataclass(frozen=True)
class SessionRecord:
    session: str
    namespace: str
    deployment: str
    pid: int
    started: float  # the process's create time
    written: float  # wall clock, for dropping records that never matched a lock
    machine: Machine


def _path(session: str) -> Path | None:
    if not _SESSION_ID.fullmatch(session):
        return None  # not an id bridge makes: never a file name
    return state_dir() / "sessions" / f"{session}.json"


def register(session: str, namespace: str, deployment: str) -> None:
    """Record that this process holds (is about to take) `session`'s lock."""
    path = _path(session)
    if path is None:
        raise ValueError(f"not a session id: {session!r}")
    me = psutil.Process()
    record = SessionRecord(session, namespace, deployment, me.pid, me.create_time(),
                           time.time(), Machine.here())
    write_record(path, asdict(record))
    _prune(path.parent)


def write_record(path: Path, data: Mapping[str, object]) -> None:
    """One record of bridge's state (sessions, mounts) as JSON, written atomically with mode
    0600 in a directory only this user can enter (made 0700 with every missing parent, or
    checked: `env.private_dir`). Raises OSError or BridgeError."""
    env.private_dir(path.parent)
    base = state_dir()
    if base in path.parents:  # the state directory above it too (sessions/, mounts/)
        env.private_dir(base)
    env.write_private(path, json.dumps(data))


def read(session: str) -> SessionRecord | None:
    """The record of `session`, None when there is none or it is not one bridge wrote."""
    path = _path(session)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        machine = data["machine"]
        record = SessionRecord(
            session=str(data["session"]), namespace=str(data["namespace"]),
            deployment=str(data["deployment"]), pid=int(data["pid"]),
            started=float(data["started"]), written=float(data["written"]),
            machine=Machine(str(machine["host"]), float(machine["boot"]),
                            int(machine["pidns"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.session == session else None


def judge(record: SessionRecord | None, namespace: str, deployment: str, here: Machine,
          running: bool) -> int | None:
    """The pid of the dead bridge that held this lock, when `record` (this user's, for the
    same session) names the same Deployment and was written on this machine (`here`) by a
    process that is gone (`running`: whether that pid runs here, as the same process) or in an
    earlier boot; None when this machine cannot tell (no record, another Deployment, another
    host or pid namespace) or the holder runs."""
    if record is None or (record.namespace, record.deployment) != (namespace, deployment):
        return None
    then = record.machine
    if then.host != here.host:
        return None  # a home directory shared with another machine: its pids say nothing here
    if abs(then.boot - here.boot) > BOOT_SLACK_S:
        return record.pid if then.boot < here.boot else None  # rebooted since: gone
    if then.pidns != here.pidns:
        return None  # another container on this machine: its pid is not ours to look up
    return None if running else record.pid


def ended(session: str, namespace: str, deployment: str) -> int | None:
    """`judge` on this machine: the pid of `session`'s bridge here, once it is gone."""
    record = read(session)
    running = record is not None and same_process(record.pid, record.started)
    return judge(record, namespace, deployment, Machine.here(), running)


def alive_here(session: str, namespace: str, deployment: str) -> SessionRecord | None:
    """The record of `session`'s bridge when it runs on this machine now (the same process,
    seen in this pid namespace, holding this Deployment): this user's own live session."""
    record = read(session)
    if record is None or not same_process(record.pid, record.started):
        return None
    # judged as if gone: a pid comes back only when this machine may judge that record by it
    judged = judge(record, namespace, deployment, Machine.here(), running=False)
    return record if judged == record.pid else None


def forget(session: str) -> None:
    path = _path(session)
    if path is not None:
        path.unlink(missing_ok=True)


def _prune(directory: Path) -> None:
    """Drop records older than KEEP_UNMATCHED_S whose process is gone (a bridge killed before
    its lock was written leaves one that no lock will ever match)."""
    cutoff = time.time() - KEEP_UNMATCHED_S
    for entry in directory.glob("*.json"):
        record = read(entry.stem)
        if record is not None and record.written < cutoff \
                and not same_process(record.pid, record.started):
            entry.unlink(missing_ok=True)
