"""The pod's files on this machine, under one directory ($BRIDGE_ROOT), at their pod paths.

The sidecar serves the swapped container's volume mounts over SFTP (sidecar/files.py). Two
ways to bring them here, over the session's existing SSH connection:

- live: sshfs in its `passive` mode (it speaks SFTP on its stdin/stdout) mounts them; its
  stdin/stdout are a socket whose other end this module pumps to and from an `sftp` subsystem
  channel. Changes in the pod (a ConfigMap update) show. Needs sshfs and FUSE (/dev/fuse).
  sshfs runs with `auto_unmount`, so a bridge killed with SIGKILL still leaves no mount (the
  channel closes, sshfs exits, fusermount3 unmounts). After a reconnect the mount is made
  again on the new connection, bounded: when that fails, the mount point is detached (never
  left as a FUSE mount nobody answers, whose every access blocks) and the session goes on
  with a warning that the files are no longer live;
- copy: a snapshot taken at start with asyncssh's SFTP client, up to a size limit.

Either way the directory is removed at the end, and a record of it lives under
$XDG_STATE_HOME/bridge/mounts until then, so `bridge restore` can remove what a killed bridge
left (`cleanup_leftovers`). Nothing is ever deleted under a path that is still mounted.

    async with mounts.provide(conn, "live", None, progress=p, session=sid) as root:
        ...  # child env: BRIDGE_ROOT=root
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncssh
import psutil

from bridge.errors import BridgeError
from bridge.local import records as localstate
from bridge.progress import Progress

MODES = ("auto", "copy", "live")
COPY_LIMIT = 256 * 1024 * 1024  # bytes a snapshot may take
COPY_MAX_ENTRIES = 100_000
COPY_MAX_DEPTH = 40
MOUNT_TIMEOUT = 15.0
UNMOUNT_TIMEOUT = 10.0
HELPER_GRACE = 2.0  # how long an ended sshfs's auto_unmount helper may take to end too
FSNAME_PREFIX = "bridge-"
PUMP_CHUNK = 256 * 1024


# ------------------------------------------------------------------ decisions (pure-ish)


def live_problem() -> str | None:
    """Why live mode cannot work on this machine, or None."""
    if shutil.which("sshfs") is None:
        return "sshfs is not installed"
    if _fusermount() is None:
        return "fusermount3 (fuse3) is not installed"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    return None


def choose_mode(requested: str, problem: str | None) -> tuple[str, str]:
    """(mode, what to tell the user) for the requested mode; BridgeError when live was asked
    for and cannot work."""
    if requested == "live" and problem:
        raise BridgeError(f"--mount-mode live: {problem}; use --mount-mode copy; "
                          "nothing was changed")
    if requested == "copy":
        return "copy", "copying a snapshot of the pod's files (--mount-mode copy)"
    if problem is None:
        return "live", "mounting the pod's files live with sshfs"
    return "copy", f"copying a snapshot of the pod's files (live mode needs sshfs and FUSE: " \
                   f"{problem})"


def root_problem(path: str) -> str | None:
    """Why `path` cannot hold the pod's files, or None: it must be an empty directory or not
    exist yet (in a directory that does), since everything in it is removed at the end."""
    p = Path(path)
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        return f"--mount {path} is not a directory"
    if p.is_dir():
        if _is_mount_point(str(p.absolute())):
            return f"--mount {path} is a mount point already"
        if any(p.iterdir()):
            return f"--mount {path} is not empty (everything in it is removed at the end)"
        return None
    if not p.parent.is_dir():
        return f"--mount {path}: directory {p.parent} does not exist"
    if not os.access(p.parent, os.W_OK | os.X_OK):
        return f"--mount {path}: directory {p.parent} is not writable"
    return None


def safe_name(name: str) -> bool:
    """A directory entry the server sent is one plain name (never a path or a dot entry)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


# ------------------------------------------------------------------ records of live sessions


def records_dir() -> Path:
    return localstate.state_dir() / "mounts"


@dataclass(frozen=True)
class Record:
    pid: int
    started: float  # the process's create time (a reused pid is not this bridge)
    root: str
    created_root: bool
    mode: str
    fsname: str
    helper_pid: int = 0  # sshfs, live mode
    helper_started: float = 0.0

    def alive(self) -> bool:
        return localstate.same_process(self.pid, self.started)


def _write_record(record: Record, session: str) -> Path:
    path = records_dir() / f"{session}.json"
    localstate.write_record(path, record.__dict__)
    return path


def _read_record(path: Path) -> Record | None:
    try:
        data = json.loads(path.read_text())
        record = Record(pid=int(data["pid"]), started=float(data["started"]),
                        root=str(data["root"]), created_root=bool(data["created_root"]),
                        mode=str(data["mode"]), fsname=str(data["fsname"]),
                        helper_pid=int(data.get("helper_pid", 0)),
                        helper_started=float(data.get("helper_started", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if os.path.isabs(record.root) else None


def cleanup_leftovers(say: Callable[[str], None]) -> int:
    """Unmount and remove what bridge sessions that are no longer running left (a SIGKILL);
    the number of directories cleaned. Sessions still running are left alone."""
    directory = records_dir()
    if not directory.is_dir():
        return 0
    cleaned = 0
    for path in sorted(directory.glob("*.json")):
        record = _read_record(path)
        if record is None:
            say(f"ignoring an unreadable mount record {path}")
            continue
        if record.alive():
            continue
        if localstate.same_process(record.helper_pid, record.helper_started):
            # an sshfs whose bridge died with a request pending can hang; its auto_unmount
            # helper unmounts once it is gone
            with contextlib.suppress(psutil.Error):
                psutil.Process(record.helper_pid).kill()
        if _mounted_as(record.root, record.fsname):
            _unmount(record.root, lazy=True)
        if _is_mount_point(record.root):
            say(f"the pod's files are still mounted at {record.root}; unmount it with "
                f"`fusermount3 -u {record.root}`")
            continue
        _remove_root(record.root, record.created_root)
        path.unlink(missing_ok=True)
        say(f"removed the pod's files a dead session left at {record.root}")
        cleaned += 1
    return cleaned


# ------------------------------------------------------------------ mount helpers


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _mounts() -> list[tuple[str, str]]:
    """(source, mount point) of every mount, from /proc/mounts. Never a stat() of a mount
    point: while bridge pumps sshfs's traffic in this thread, one would wait for itself."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            found.append((_unescape(fields[0]), _unescape(fields[1])))
    return found


def _unescape(field: str) -> str:
    r"""/proc/mounts writes space, tab, newline and backslash as \040 and so on."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _mounted_as(root: str, fsname: str) -> bool:
    """True when /proc/mounts shows our sshfs (by its fsname) at root."""
    return (fsname, root) in _mounts()


def _is_mount_point(path: str) -> bool:
    return any(point == path for _, point in _mounts())


def _unmount(root: str, lazy: bool) -> bool:
    tool = _fusermount()
    if tool is None:
        return False
    argv = [tool, "-u", *(["-z"] if lazy else []), root]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    return result.returncode == 0


def _remove_root(root: str, created: bool) -> None:
    """Remove what bridge put under root (and root itself if bridge made it). Never while
    something is mounted there: removing files through a mount would remove them in the pod."""
    if _is_mount_point(root) or not os.path.isdir(root) or os.path.islink(root):
        return
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


# ------------------------------------------------------------------ the files


class Files:
    """The pod's files under `root` for one session: `CopiedFiles` or `LiveFiles` (chosen
    once, by `open_files`; or use `provide`)."""

    mode = ""  # "copy" | "live": what the record says

    def __init__(self, conn: asyncssh.SSHClientConnection, root: str | None, *,
                 writable: bool, progress: Progress, session: str, copy_limit: int) -> None:
        self._conn = conn
        self._asked_root = root
        self._writable = writable
        self._progress = progress
        self._session = session
        self._copy_limit = copy_limit
        self.root = ""
        self._created = False
        self._record: Path | None = None
        self._fsname = f"{FSNAME_PREFIX}{session}:/"

    async def start(self) -> str:
        """Make the directory, record it (for a later `bridge restore`), bring the files."""
        self._make_root()
        me = psutil.Process()
        self._record = _write_record(Record(
            pid=me.pid, started=me.create_time(), root=self.root, created_root=self._created,
            mode=self.mode, fsname=self._fsname), self._session)
        await self._bring()
        return self.root

    async def _bring(self) -> None:
        raise NotImplementedError

    def _make_root(self) -> None:
        if self._asked_root is None:
            self.root = tempfile.mkdtemp(prefix=f"bridge-files-{self._session}-")
            self._created = True
        else:
            self.root = os.path.abspath(self._asked_root)
            problem = root_problem(self.root)
            if problem:
                raise BridgeError(problem)
            if not os.path.isdir(self.root):
                os.mkdir(self.root, 0o700)
                self._created = True
        self.root = os.path.realpath(self.root)  # as /proc/mounts will name it
        os.chmod(self.root, 0o700)  # secrets: this user only

    async def reattach(self, conn: asyncssh.SSHClientConnection) -> None:
        """After the SSH connection was made anew (a copy has nothing more to do)."""
        self._conn = conn

    async def close(self) -> None:
        """Remove the directory and the record. Bounded."""
        await self._release()
        if self.root:
            if _is_mount_point(self.root):
                self._progress.warn(f"the pod's files are still mounted at {self.root}; run "
                                    "`bridge restore` or `fusermount3 -u` on it")
                return
            _remove_root(self.root, self._created)
        if self._record is not None:
            self._record.unlink(missing_ok=True)

    async def _release(self) -> None:
        """What must end before the directory goes (live: the mount)."""


class CopiedFiles(Files):
    """A snapshot of the pod's files, copied over SFTP at the start (bounded in size, entries
    and depth)."""

    mode = "copy"

    async def _bring(self) -> None:
        await self._copy()

    async def _copy(self) -> None:
        budget = {"bytes": 0, "entries": 0}
        try:
            async with self._conn.start_sftp_client() as sftp:
                await self._copy_dir(sftp, "/", self.root, budget, depth=0, seen=frozenset())
        except asyncssh.SFTPError as exc:
            raise BridgeError(f"copying the pod's files failed: {exc.reason}") from None
        except (asyncssh.Error, OSError) as exc:
            raise BridgeError(f"copying the pod's files failed: {exc}") from None
        mib = budget["bytes"] / (1024 * 1024)
        self._progress.info(f"copied the pod's files to {self.root} ({budget['entries']} "
                            f"entries, {mib:.1f} MiB)")

    async def _copy_dir(self, sftp: asyncssh.SFTPClient, remote: str, local: str,
                        budget: dict[str, int], depth: int, seen: frozenset[str]) -> None:
        if depth > COPY_MAX_DEPTH:
            raise BridgeError(f"the pod's files nest deeper than {COPY_MAX_DEPTH} directories "
                              f"at {remote}; use --mount-mode live")
        for entry in await sftp.readdir(remote):
            name = os.fsdecode(entry.filename)
            if name in (".", ".."):
                continue
            if not safe_name(name):
                self._progress.warn(f"skipped a file with an unsafe name in {remote}: {name!r}")
                continue
            child = posixpath.join(remote, name)
            target = os.path.join(local, name)
            budget["entries"] += 1
            if budget["entries"] > COPY_MAX_ENTRIES:
                raise BridgeError(f"the pod's files pass {COPY_MAX_ENTRIES} entries at {child}; "
                                  "use --mount-mode live")
            kind = stat.S_IFMT(entry.attrs.permissions or 0)
            if kind == stat.S_IFDIR:
                canonical = os.fsdecode(await sftp.realpath(child))
                if canonical in seen or canonical == remote:
                    continue  # a link back to a directory being copied: a loop
                os.mkdir(target, 0o700)
                await self._copy_dir(sftp, child, target, budget, depth + 1,
                                     seen | {canonical, remote})
            elif kind == stat.S_IFREG:
                size = entry.attrs.size or 0
                if budget["bytes"] + size > self._copy_limit:
                    raise BridgeError(
                        f"the pod's files pass the copy limit of "
                        f"{self._copy_limit / (1024 * 1024):g} MiB at {child} ({size} bytes); "
                        "use --mount-mode live (needs sshfs and FUSE), or swap without --mount")
                budget["bytes"] += size
                await sftp.get(child, target)
                os.chmod(target, (entry.attrs.permissions or 0o600) & 0o777 | 0o600)


class LiveFiles(Files):
    """The pod's files mounted live: sshfs in passive mode over an SFTP channel of the SSH
    connection, made again on every new connection."""

    mode = "live"

    def __init__(self, conn: asyncssh.SSHClientConnection, root: str | None, *,
                 writable: bool, progress: Progress, session: str, copy_limit: int) -> None:
        super().__init__(conn, root, writable=writable, progress=progress, session=session,
                         copy_limit=copy_limit)
        self._sshfs: asyncio.subprocess.Process | None = None
        self._helpers: list[psutil.Process] = []  # sshfs's auto_unmount helper (fusermount3)
        self._pumps: list[asyncio.Task[None]] = []
        self._channel: asyncssh.SSHWriter[bytes] | None = None
        # bridge's end of sshfs's stdin/stdout, owned by its asyncio transport: closed only
        # through it (a socket closed under a transport leaves the event loop a stale
        # registration of its descriptor number; the next socket given that number is then
        # never read, and the re-made sshfs would wait forever for its SFTP start)
        self._stream: asyncio.StreamWriter | None = None
        self.live_lost = False  # a re-mount failed: the directory no longer shows the pod

    async def _bring(self) -> None:
        try:
            await self._mount()
        except _NoMount as exc:
            raise BridgeError(f"sshfs could not mount the pod's files at {self.root}: "
                              f"{exc}; try --mount-mode copy") from None

    async def _mount(self) -> None:
        """Mount on the current connection; bounded by MOUNT_TIMEOUT. On failure nothing is
        left running or mounted, and _NoMount says why."""
        try:
            await self._start_sshfs()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abandon_live()
            raise
        self._progress.info(f"mounted the pod's files at {self.root} (live, "
                            f"{'read-write' if self._writable else 'read-only'})")

    async def _start_sshfs(self) -> None:
        tool = shutil.which("sshfs")
        assert tool is not None
        deadline = time.monotonic() + MOUNT_TIMEOUT
        try:
            writer, reader, _ = await asyncio.wait_for(
                self._conn.open_session(subsystem="sftp", encoding=None), MOUNT_TIMEOUT)
        except TimeoutError:
            raise _NoMount(f"the sidecar did not open the files channel within "
                           f"{MOUNT_TIMEOUT:g}s") from None
        except (asyncssh.Error, OSError) as exc:
            raise _NoMount(f"the sidecar refused the files channel: {exc}") from None
        self._channel = writer
        ours, theirs = socket.socketpair()
        options = ["passive", "auto_unmount", f"fsname={self._fsname}", "subtype=bridge",
                   "dcache_timeout=2", "ro" if not self._writable else "rw"]
        try:
            self._sshfs = await asyncio.create_subprocess_exec(
                tool, "-f", "-o", ",".join(options), self._fsname, self.root,
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=asyncio.subprocess.PIPE,
                start_new_session=True)  # a Ctrl-C in the terminal is not for sshfs
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        sreader, swriter = await asyncio.open_unix_connection(sock=ours)
        self._stream = swriter
        assert self._record is not None
        me = psutil.Process()
        helper = psutil.Process(self._sshfs.pid)
        _write_record(Record(
            pid=me.pid, started=me.create_time(), root=self.root, created_root=self._created,
            mode=self.mode, fsname=self._fsname, helper_pid=helper.pid,
            helper_started=helper.create_time()), self._session)
        self._pumps = [asyncio.create_task(_pump_channel_to_socket(reader, swriter)),
                       asyncio.create_task(_pump_socket_to_channel(sreader, writer))]
        # sshfs mounts first and starts SFTP after: until it has, the mount is listed but
        # every access waits; it counts as mounted once a stat of it is answered
        while not _mounted_as(self.root, self._fsname):
            if self._sshfs.returncode is not None or time.monotonic() > deadline:
                raise _NoMount(await self._sshfs_error())
            await asyncio.sleep(0.05)
        self._helpers = _auto_unmount_helpers(self._sshfs.pid)
        if not await _answers(self.root, deadline - time.monotonic()):
            raise _NoMount(await self._sshfs_error() if self._sshfs.returncode is not None
                           else f"the mount did not answer within {MOUNT_TIMEOUT:g}s")

    async def _sshfs_error(self) -> str:
        proc = self._sshfs
        if proc is None:
            return "not started"
        if proc.returncode is None:
            return f"no mount after {MOUNT_TIMEOUT:g}s"
        err = b""
        if proc.stderr is not None:
            with contextlib.suppress(Exception):
                err = await asyncio.wait_for(proc.stderr.read(4096), 2)
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {proc.returncode}"

    async def reattach(self, conn: asyncssh.SSHClientConnection) -> None:
        """After the SSH connection was made anew: a live mount rides the new one (the old
        one's sshfs ended with its channel). Bounded, and never raises: when the mount cannot
        be made again, the directory is left unmounted and the session goes on, told once
        that the files are no longer live."""
        self._conn = conn
        if not self.root or self.live_lost:
            return
        await self._unmount_live()
        try:
            await self._mount()
        except _NoMount as exc:
            self.live_lost = True
            self._progress.warn(f"the pod's files at {self.root} are no longer live (mounting "
                                f"them again after the reconnect failed: {exc}); the "
                                "directory stays empty until the session ends")

    async def _release(self) -> None:
        if self.root:
            await self._unmount_live()

    async def _unmount_live(self) -> None:
        """Unmount, and end sshfs, its auto_unmount helper, the pumps and the channel. The
        helper is ended too before anything is mounted at the same path again: it unmounts
        by path whatever FUSE mount of this type is there once sshfs has ended."""
        if self.root:
            # in a thread: unmounting may need sshfs to talk through this loop's pumps
            if _mounted_as(self.root, self._fsname) and not await asyncio.to_thread(
                    _unmount, self.root, False):
                self._progress.warn(f"{self.root} is busy; detaching the mount (lazy unmount)")
                await asyncio.to_thread(_unmount, self.root, True)
            proc = self._sshfs
            if proc is not None and proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), UNMOUNT_TIMEOUT)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await self._end_helpers(HELPER_GRACE)
            await self._end_pumps()

    async def _abandon_live(self) -> None:
        """A mount that did not come up: sshfs killed first (every access waiting on it then
        fails instead of blocking), the mount point detached, the rest ended."""
        proc = self._sshfs
        if proc is not None and proc.returncode is None:
            self._helpers = self._helpers or _auto_unmount_helpers(proc.pid)
            proc.kill()
            await proc.wait()
        if self.root and _mounted_as(self.root, self._fsname):
            await asyncio.to_thread(_unmount, self.root, True)
        await self._end_helpers(0.0)
        await self._end_pumps()

    async def _end_helpers(self, grace: float) -> None:
        helpers, self._helpers = self._helpers, []
        if helpers:
            for helper in await asyncio.to_thread(_still_running, helpers, grace):
                with contextlib.suppress(psutil.Error):
                    helper.kill()

    async def _end_pumps(self) -> None:
        for task in self._pumps:
            task.cancel()
        for task in self._pumps:
            with contextlib.suppress(BaseException):
                await task
        self._pumps = []
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._stream is not None:
            self._stream.close()  # the transport unregisters the socket, then closes it
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stream.wait_closed(), UNMOUNT_TIMEOUT)
            self._stream = None



def open_files(conn: asyncssh.SSHClientConnection, mode: str, root: str | None, *,
               writable: bool, progress: Progress, session: str, copy_limit: int) -> Files:
    """The files of `mode` ("live" or "copy", see `choose_mode`), not started yet."""
    kind = {"live": LiveFiles, "copy": CopiedFiles}.get(mode)
    if kind is None:
        raise ValueError(f"no files mode {mode!r}")
    return kind(conn, root, writable=writable, progress=progress, session=session,
                copy_limit=copy_limit)


class _NoMount(Exception):
    """Why sshfs did not bring the mount up (one line)."""


def _auto_unmount_helpers(sshfs_pid: int) -> list[psutil.Process]:
    """The fusermount3 that mounted for sshfs and waits for it to end (auto_unmount)."""
    try:
        children = psutil.Process(sshfs_pid).children()
    except psutil.Error:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.name().startswith("fusermount"):
                found.append(child)
    return found


def _still_running(procs: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """Those of `procs` still running after up to `grace` seconds (an ended one whose new
    parent has not reaped it yet counts as ended)."""
    deadline = time.monotonic() + grace
    while True:
        running = [p for p in procs if _running(p)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_STAT = "import os, sys\nos.stat(sys.argv[1])\n"


async def _answers(root: str, within: float) -> bool:
    """True when a stat of `root` is answered within `within` seconds. Done by a child process
    (killed when late): in this thread it would wait for the pumps this thread runs."""
    if within <= 0:
        return False
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", _STAT, root, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code = None
    try:
        code = await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        pass
    finally:
        if proc.returncode is None:
            proc.kill()  # a wait for a FUSE answer is killable
            with anyio.CancelScope(shield=True):
                await proc.wait()
    return code == 0


async def _pump_channel_to_socket(reader: asyncssh.SSHReader[bytes],
                                  writer: asyncio.StreamWriter) -> None:
    """The channel's data to sshfs. When the channel ends, also with an error (the connection
    was lost), the socket is closed: sshfs then sees its end, fails what waits and exits,
    instead of leaving accesses of the mount waiting for a channel that is gone."""
    try:
        while data := await reader.read(PUMP_CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncssh.Error):
        pass
    finally:
        writer.close()


async def _pump_socket_to_channel(reader: asyncio.StreamReader,
                                  writer: asyncssh.SSHWriter[bytes]) -> None:
    try:
        while data := await reader.read(PUMP_CHUNK):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except (OSError, asyncssh.Error):
        pass


@contextlib.asynccontextmanager
async def provide(conn: asyncssh.SSHClientConnection, mode: str, root: str | None, *,
                  writable: bool = False, progress: Progress, session: str,
                  copy_limit: int = COPY_LIMIT) -> AsyncIterator[str]:
    """The pod's files under a directory for the `async with` body; its path.

    `mode` is "live" or "copy" (see `choose_mode`); `root` None means a fresh temporary
    directory. Everything is undone on the way out, whatever ends the body."""
    files = open_files(conn, mode, root, writable=writable, progress=progress, session=session,
                       copy_limit=copy_limit)
    try:
        yield await files.start()
    finally:
        with anyio.CancelScope(shield=True):
            await files.close()
