"""The pod's files over SFTP: the swapped container's volume mounts, read-only, and nothing else.

The client sees a virtual tree in pod paths: `/` and the directories above each mount are
virtual (they list only the way to the mounts); each mount shows the files under its source
directory (in the pod, the source is the mount path itself). Every path a client names is
resolved here, on the server:

- `..` is resolved by the text of the path first, so `/etc/config/../../etc/passwd` is
  `/etc/passwd`, which is no mount;
- symbolic links are followed only when where they lead stays inside the same mount
  (ConfigMap and Secret volumes are symlink farms: `app.yaml -> ..data/app.yaml`,
  `..data -> ..2024_01_01_00_00_00.123`); a link leading out is refused, and left out of
  listings. The check and the use are one walk of directory descriptors (`open_beneath`:
  openat with O_NOFOLLOW, component by component), so a directory swapped for a link to
  `/etc` between a check and an open cannot lead anywhere: there is no second lookup;
- the client sees no symbolic links at all: `lstat` is `stat` of where a link leads, and
  `readlink`/`symlink`/`link` are refused, so nothing the client does can be redirected;
- nothing is changed unless the mount is writable (the user asked for `--mount-rw` and the
  volume mount is not read-only; the proxy pod mounts it read-only otherwise, too).

Only an authenticated connection opens sessions, and only the session's key authenticates.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh
from asyncssh.stream import SSHServerStreamSession

log = logging.getLogger("sidecar")

SFTP_VERSION = 3  # what OpenSSH's sftp and sshfs speak
_WRITE_FLAGS = (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT
                | asyncssh.FXF_TRUNC)


@dataclass(frozen=True)
class Mount:
    """One volume mount: `path` as the app sees it, `source` where the sidecar reads it."""

    path: str
    source: str
    writable: bool = False


def _clean_absolute(name: str, text: object) -> str:
    if not isinstance(text, str) or not text.startswith("/") or "\0" in text:
        raise ValueError(f"{name} must be an absolute path, got {text!r}")
    clean = posixpath.normpath(text)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if clean == "/":
        raise ValueError(f"{name} must not be / (that would serve the whole filesystem)")
    return clean


def parse_mounts(raw: str) -> tuple[Mount, ...]:
    """The mount list from its setting: a JSON list of {"path", "writable"[, "source"]};
    empty text means no files are served. ValueError with a one-line reason."""
    if raw.strip() == "":
        return ()
    try:
        items = json.loads(raw)
    except ValueError:
        raise ValueError("must be a JSON list of mounts") from None
    if not isinstance(items, list):
        raise ValueError("must be a JSON list of mounts")
    mounts: list[Mount] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or set(item) - {"path", "source", "writable"}:
            raise ValueError(f"each mount is an object with path, writable and source; got "
                             f"{item!r}")
        path = _clean_absolute("a mount's path", item.get("path"))
        source = _clean_absolute("a mount's source", item.get("source", path))
        writable = item.get("writable", False)
        if not isinstance(writable, bool):
            raise ValueError(f"writable of mount {path} must be true or false")
        if path in seen:
            raise ValueError(f"mount {path} is listed twice")
        seen.add(path)
        mounts.append(Mount(path, source, writable))
    return tuple(mounts)


# ------------------------------------------------------------------ resolving paths


@dataclass(frozen=True)
class Place:
    """Where a client's path leads by its text: a virtual directory (mount is None) or a path
    `rel` beneath a mount's source (opened only by `open_beneath`)."""

    path: str  # the clean pod path
    mount: Mount | None
    rel: str = ""  # beneath mount.source, "" for the mount itself


class Tree:
    """The virtual tree of the mounts; resolves client paths by their text (pure but for
    `children`, which leaves out mounts whose source is missing)."""

    def __init__(self, mounts: Sequence[Mount]) -> None:
        self.mounts = tuple(sorted(mounts, key=lambda m: len(m.path), reverse=True))

    @staticmethod
    def clean(path: bytes) -> str:
        text = os.fsdecode(path)
        if "\0" in text:
            raise asyncssh.SFTPNoSuchFile("no such file")
        clean = posixpath.normpath("/" + text)
        return "/" + clean.lstrip("/") if clean.startswith("//") else clean

    def mount_of(self, clean: str) -> Mount | None:
        for m in self.mounts:  # longest first: a nested mount wins
            if clean == m.path or clean.startswith(m.path + "/"):
                return m
        return None

    def children(self, clean: str) -> list[str]:
        """Names under a virtual directory (the next component toward each present mount)."""
        prefix = "/" if clean == "/" else clean + "/"
        names = {m.path[len(prefix):].split("/", 1)[0] for m in self.mounts
                 if m.path.startswith(prefix) and os.path.exists(m.source)}
        return sorted(names)

    def is_virtual(self, clean: str) -> bool:
        prefix = "/" if clean == "/" else clean + "/"
        return any(m.path.startswith(prefix) for m in self.mounts)

    def resolve(self, path: bytes) -> Place:
        """The place `path` names; SFTPNoSuchFile outside every mount. Symbolic links are
        followed later, by `open_beneath`, on the descriptors it opens."""
        clean = self.clean(path)
        mount = self.mount_of(clean)
        if mount is None:
            if self.is_virtual(clean):
                return Place(clean, None)
            raise asyncssh.SFTPNoSuchFile(f"{clean} is not in the pod's mounts")
        return Place(clean, mount, clean[len(mount.path):].lstrip("/"))


# ------------------------------------------------------------------ opening beneath a mount

MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup
_DIR_STEP = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Outside(asyncssh.SFTPPermissionDenied):
    """A symbolic link on the way leads out of the mount."""


@dataclass
class Opened:
    """The end of a walk: `fd` (the object opened with the asked flags, or, for an entry, the
    directory holding `name`), and the canonical components beneath the mount."""

    fd: int
    parts: list[str]
    name: str = ""  # the final name, for an entry walk (unlink, mkdir, rename...)


def _link_target(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a link
            return None
        raise


def open_beneath(root: str, rel: str, flags: int, mode: int = 0o644, *,
                 entry: bool = False, where: str = "") -> Opened:
    """Open `rel` beneath the directory `root` without a check-then-use race.

    Each component is opened with openat(2) on the descriptor of the directory the walk is in,
    with O_NOFOLLOW: what was checked is what is used, whatever is renamed or replaced by a
    link meanwhile. A symbolic link met on the way is read (readlinkat) and its target walked
    the same way: `..` returns to the descriptor the walk came from (never above `root`), an
    absolute target must name a path under `root` (the mount's source; in the pod that is the
    mount's own path), and then the walk restarts from `root`'s descriptor. So the kubelet's
    `..data` links inside a ConfigMap or Secret volume resolve, and nothing leads out (Outside,
    the error `where` names). `entry=True` stops before the final component: the directory's
    descriptor and the name (its links followed too), for unlink, mkdir, rename."""
    root_real = os.path.realpath(root)
    stack: list[tuple[int, str]] = [(os.open(root, _DIR_STEP), "")]
    pending = [p for p in rel.split("/") if p not in ("", ".")]
    links = 0

    def outside() -> Outside:
        return Outside(f"{where or rel} leads outside its mount (a symbolic link)")

    try:
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) == 1:
                    raise outside()
                os.close(stack.pop()[0])
                continue
            here = stack[-1][0]
            last = not pending
            if last and entry:
                target = _link_target_or_missing(name, here)
            else:
                try:
                    fd = os.open(name, (flags | os.O_NOFOLLOW | os.O_CLOEXEC) if last
                                 else _DIR_STEP, mode, dir_fd=here)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    target = _link_target(name, here)
                    if target is None:
                        raise
                else:
                    if not (last and flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode)):
                        if last:
                            return Opened(fd, [n for _, n in stack[1:]] + [name])
                        stack.append((fd, name))
                        continue
                    os.close(fd)  # O_PATH opened the link itself: follow it
                    target = _link_target(name, here)
                    if target is None:
                        raise OSError(errno.ELOOP, "the link changed while it was read")
            if target is None:  # an entry that is no link (or does not exist yet)
                return Opened(os.dup(here), [n for _, n in stack[1:]], name)
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links")
            if target.startswith("/"):
                clean = posixpath.normpath(target)
                if clean != root_real and not clean.startswith(root_real.rstrip("/") + "/"):
                    raise outside()
                while len(stack) > 1:
                    os.close(stack.pop()[0])
                target = clean[len(root_real):]
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
        # The walk ended on a directory it holds (the root, or after `..` or a link).
        if entry:
            raise asyncssh.SFTPPermissionDenied(f"{where or rel} is a mount itself")
        fd = os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1][0])
        return Opened(fd, [n for _, n in stack[1:]])
    finally:
        for fd, _ in stack:
            os.close(fd)


def _link_target_or_missing(name: str, dir_fd: int) -> str | None:
    """The target of `name` if it is a link; None if it is anything else or does not exist."""
    try:
        return _link_target(name, dir_fd)
    except FileNotFoundError:
        return None


_STARTED = int(time.time())


def _virtual_attrs() -> asyncssh.SFTPAttrs:
    return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_DIRECTORY, size=0, uid=0, gid=0,
                              permissions=stat.S_IFDIR | 0o555, atime=_STARTED,
                              mtime=_STARTED, nlink=2)


def _os_error(exc: OSError) -> asyncssh.SFTPError:
    """An OSError as the SFTP error a client understands (what asyncssh would send)."""
    text = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return asyncssh.SFTPNoSuchFile(text)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return asyncssh.SFTPPermissionDenied(text)
    return asyncssh.SFTPFailure(text)


class _Handle:
    """An open file and whether it may be changed."""

    def __init__(self, fd: int, writable: bool) -> None:
        self.fd = fd
        self.writable = writable

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """For asyncssh's `ranges` extension (SEEK_DATA/SEEK_HOLE on the open file)."""
        return os.lseek(self.fd, offset, whence)


class FilesServer(asyncssh.SFTPServer):
    """An SFTP server confined to the mounts (see the module's docstring)."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], mounts: Sequence[Mount],
                 label: str) -> None:
        super().__init__(chan)
        self._tree = Tree(mounts)
        self._label = label

    # -- helpers
    def _refused(self, what: str, path: str, exc: asyncssh.SFTPError) -> None:
        log.info("%s sftp %s %r refused: %s", self._label, what, path, exc.reason)

    def _place(self, path: bytes, what: str) -> Place:
        try:
            return self._tree.resolve(path)
        except asyncssh.SFTPError as exc:
            self._refused(what, os.fsdecode(path), exc)
            raise

    def _changeable(self, path: bytes, what: str) -> Place:
        place = self._place(path, what)
        if place.mount is None or not place.mount.writable:
            where = place.mount.path if place.mount else place.path
            log.info("%s sftp %s %r refused: %s is read-only", self._label, what,
                     os.fsdecode(path), where)
            raise asyncssh.SFTPPermissionDenied(f"{where} is read-only")
        return place

    def _open(self, place: Place, flags: int, what: str, mode: int = 0o644, *,
              entry: bool = False) -> Opened:
        """`place` opened beneath its mount (`open_beneath`), errors as SFTP errors."""
        assert place.mount is not None
        try:
            return open_beneath(place.mount.source, place.rel, flags, mode, entry=entry,
                                where=place.path)
        except asyncssh.SFTPError as exc:
            self._refused(what, place.path, exc)
            raise
        except OSError as exc:
            raise _os_error(exc) from None

    def _stat(self, place: Place) -> asyncssh.SFTPAttrs:
        if place.mount is None:
            return _virtual_attrs()
        opened = self._open(place, os.O_PATH, "stat")
        try:
            return asyncssh.SFTPAttrs.from_local(self._call(os.fstat, opened.fd))
        finally:
            os.close(opened.fd)

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise _os_error(exc) from None

    def _pod_path(self, place: Place, parts: Sequence[str]) -> str:
        assert place.mount is not None
        return posixpath.join(place.mount.path, *parts) if parts else place.mount.path

    # -- reading
    def realpath(self, path: bytes) -> bytes:
        place = self._place(path, "realpath")
        if place.mount is None:
            return os.fsencode(place.path)
        try:
            opened = self._open(place, os.O_PATH, "realpath")
            parts = opened.parts
        except asyncssh.SFTPNoSuchFile:  # a name to be created: its directory's canonical path
            opened = self._open(place, os.O_PATH, "realpath", entry=True)
            parts = [*opened.parts, opened.name]
        os.close(opened.fd)
        return os.fsencode(self._pod_path(place, parts))

    def stat(self, path: bytes) -> Any:
        return self._stat(self._place(path, "stat"))

    def lstat(self, path: bytes) -> Any:  # no symbolic links in this view
        return self._stat(self._place(path, "lstat"))

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        place = self._place(path, "list")
        yield asyncssh.SFTPName(b".", attrs=self._stat(place))
        yield asyncssh.SFTPName(b"..", attrs=_virtual_attrs())
        if place.mount is None:
            for name in self._tree.children(place.path):
                child = posixpath.join(place.path, name)
                try:
                    attrs = self._stat(self._tree.resolve(os.fsencode(child)))
                except asyncssh.SFTPError:
                    continue
                yield asyncssh.SFTPName(os.fsencode(name), attrs=attrs)
            return
        opened = self._open(place, os.O_RDONLY | os.O_DIRECTORY, "list")
        try:
            names = sorted(self._call(os.listdir, opened.fd))
        finally:
            os.close(opened.fd)
        for name in names:
            inside = Place(posixpath.join(place.path, name), place.mount,
                           posixpath.join(place.rel, name))
            try:
                attrs = self._stat(inside)
            except Outside:
                log.info("%s sftp list: left out %r (leads outside its mount)", self._label,
                         inside.path)
                continue
            except asyncssh.SFTPError:  # a dangling link, or gone meanwhile
                continue
            yield asyncssh.SFTPName(os.fsencode(name), attrs=attrs)

    def readlink(self, path: bytes) -> bytes:
        self._place(path, "readlink")
        raise asyncssh.SFTPFailure("not a symbolic link (links are resolved by the server)")

    def statvfs(self, path: bytes) -> Any:
        place = self._place(path, "statvfs")
        if place.mount is None:
            return asyncssh.SFTPVFSAttrs(bsize=4096, frsize=4096, namemax=255)
        opened = self._open(place, os.O_PATH, "statvfs")
        try:
            return self._call(os.fstatvfs, opened.fd)
        finally:
            os.close(opened.fd)

    # -- files
    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> _Handle:
        writing = bool(pflags & _WRITE_FLAGS)
        place = self._changeable(path, "write") if writing else self._place(path, "open")
        if place.mount is None:
            raise asyncssh.SFTPFailure(f"{place.path} is a directory")
        if pflags & asyncssh.FXF_READ and pflags & asyncssh.FXF_WRITE:
            flags = os.O_RDWR
        elif pflags & asyncssh.FXF_WRITE:
            flags = os.O_WRONLY
        else:
            flags = os.O_RDONLY
        for bit, osbit in ((asyncssh.FXF_APPEND, os.O_APPEND), (asyncssh.FXF_CREAT, os.O_CREAT),
                           (asyncssh.FXF_TRUNC, os.O_TRUNC), (asyncssh.FXF_EXCL, os.O_EXCL)):
            if pflags & bit:
                flags |= osbit
        perms = 0o644 if attrs.permissions is None else attrs.permissions & 0o777
        return _Handle(self._open(place, flags, "open", perms).fd, writing)

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        assert isinstance(file_obj, _Handle)
        return bytes(self._call(os.pread, file_obj.fd, size, offset))

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        assert isinstance(file_obj, _Handle)
        if not file_obj.writable:
            raise asyncssh.SFTPPermissionDenied("the file was opened read-only")
        return int(self._call(os.pwrite, file_obj.fd, data, offset))

    def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, _Handle)
        self._call(os.close, file_obj.fd)

    def fstat(self, file_obj: object) -> Any:
        assert isinstance(file_obj, _Handle)
        return self._call(os.fstat, file_obj.fd)

    def fstatvfs(self, file_obj: object) -> Any:
        assert isinstance(file_obj, _Handle)
        return self._call(os.fstatvfs, file_obj.fd)

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        assert isinstance(file_obj, _Handle)
        if not file_obj.writable:
            raise asyncssh.SFTPPermissionDenied("the file was opened read-only")
        if attrs.size is not None:
            self._call(os.ftruncate, file_obj.fd, attrs.size)
        if attrs.permissions is not None:
            self._call(os.fchmod, file_obj.fd, attrs.permissions & 0o777)
        if attrs.atime is not None and attrs.mtime is not None:
            self._call(os.utime, file_obj.fd, (attrs.atime, attrs.mtime))

    def fsync(self, file_obj: object) -> None:
        assert isinstance(file_obj, _Handle)
        self._call(os.fsync, file_obj.fd)

    # -- changes (writable mounts only), each on a descriptor or a directory's descriptor
    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        place = self._changeable(path, "setstat")
        assert place.mount is not None
        opened = self._open(place, os.O_PATH, "setstat")
        # /proc/self/fd/N is the object the walk opened (not a name looked up again).
        handle = f"/proc/self/fd/{opened.fd}"
        try:
            if attrs.size is not None:
                self._call(os.truncate, handle, attrs.size)
            if attrs.permissions is not None:
                self._call(os.chmod, handle, attrs.permissions & 0o777)
            if attrs.atime is not None and attrs.mtime is not None:
                self._call(os.utime, handle, (attrs.atime, attrs.mtime))
        finally:
            os.close(opened.fd)

    def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self.setstat(path, attrs)

    def _entry(self, path: bytes, what: str) -> Opened:
        return self._open(self._changeable(path, what), os.O_PATH, what, entry=True)

    def remove(self, path: bytes) -> None:
        opened = self._entry(path, "remove")
        try:
            self._call(os.unlink, opened.name, dir_fd=opened.fd)
        finally:
            os.close(opened.fd)

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        perms = 0o755 if attrs.permissions is None else attrs.permissions & 0o777
        opened = self._entry(path, "mkdir")
        try:
            self._call(os.mkdir, opened.name, perms, dir_fd=opened.fd)
        finally:
            os.close(opened.fd)

    def rmdir(self, path: bytes) -> None:
        place = self._changeable(path, "rmdir")
        if place.mount is None or place.path == place.mount.path:
            raise asyncssh.SFTPPermissionDenied("a mount itself cannot be removed")
        opened = self._entry(path, "rmdir")
        try:
            self._call(os.rmdir, opened.name, dir_fd=opened.fd)
        finally:
            os.close(opened.fd)

    def _rename(self, oldpath: bytes, newpath: bytes, replace: bool) -> None:
        old_place = self._changeable(oldpath, "rename")
        new_place = self._changeable(newpath, "rename")
        if old_place.mount != new_place.mount:
            raise asyncssh.SFTPFailure("cannot move files between mounts")
        old = self._open(old_place, os.O_PATH, "rename", entry=True)
        try:
            new = self._open(new_place, os.O_PATH, "rename", entry=True)
            try:
                if not replace and _exists(new.name, new.fd):
                    raise asyncssh.SFTPFailure(f"{new_place.path} exists")
                self._call(os.replace, old.name, new.name, src_dir_fd=old.fd,
                           dst_dir_fd=new.fd)
            finally:
                os.close(new.fd)
        finally:
            os.close(old.fd)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._rename(oldpath, newpath, replace=False)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._rename(oldpath, newpath, replace=True)

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        self._place(newpath, "symlink")
        log.info("%s sftp symlink %r refused", self._label, os.fsdecode(newpath))
        raise asyncssh.SFTPPermissionDenied("creating links is not allowed")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        self._place(newpath, "link")
        log.info("%s sftp link %r refused", self._label, os.fsdecode(newpath))
        raise asyncssh.SFTPPermissionDenied("creating links is not allowed")


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


# ------------------------------------------------------------------ the session channel


class SessionSwitch(asyncssh.SSHServerSession[Any]):
    """A session channel that is the command session, unless the client asks for the `sftp`
    subsystem: then it becomes an SFTP server over the mounts (asyncssh's stream session
    runs the protocol). The decision falls before any data flows."""

    def __init__(self, commands: asyncssh.SSHServerSession[Any], mounts: Sequence[Mount],
                 label: str) -> None:
        self._active: asyncssh.SSHServerSession[Any] = commands
        self._mounts = tuple(mounts)
        self._label = label
        self._chan: Any = None

    def connection_made(self, chan: Any) -> None:
        self._chan = chan
        self._active.connection_made(chan)

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            return bool(self._active.subsystem_requested(subsystem))
        mounts, label = self._mounts, self._label

        def factory(chan: Any) -> FilesServer:
            return FilesServer(chan, mounts, label)

        stream: Any = SSHServerStreamSession(None, factory, SFTP_VERSION, False)
        stream.connection_made(self._chan)
        self._active = stream
        log.info("%s sftp started (%d mount(s))", label, len(mounts))
        return bool(stream.subsystem_requested(subsystem))

    # everything else goes to whichever session is active
    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return bool(self._active.pty_requested(term_type, term_size, term_modes))

    def shell_requested(self) -> bool:
        return bool(self._active.shell_requested())

    def exec_requested(self, command: str) -> bool:
        return bool(self._active.exec_requested(command))

    def session_started(self) -> None:
        self._active.session_started()

    def data_received(self, data: Any, datatype: Any) -> None:
        self._active.data_received(data, datatype)

    def eof_received(self) -> bool:
        return bool(self._active.eof_received())

    def pause_writing(self) -> None:
        self._active.pause_writing()

    def resume_writing(self) -> None:
        self._active.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._active.connection_lost(exc)

    def break_received(self, msec: int) -> bool:
        return bool(self._active.break_received(msec))

    def signal_received(self, signal: str) -> None:
        self._active.signal_received(signal)

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        self._active.terminal_size_changed(width, height, pixwidth, pixheight)


def session_for(commands: asyncssh.SSHServerSession[Any], mounts: Sequence[Mount],
                label: str) -> asyncssh.SSHServerSession[Any]:
    """The session to give a channel: the command session alone when no files are served
    (then `sftp` is refused like any subsystem), else one that can become an SFTP server."""
    if not mounts:
        return commands
    return SessionSwitch(commands, mounts, label)
