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
  listings;
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
    """Where a client's path leads: a virtual directory (mount is None) or a real path."""

    path: str  # the clean pod path
    mount: Mount | None
    real: str = ""  # symlink-free real path (inside mount.source)


class Tree:
    """The virtual tree of the mounts; resolves client paths (pure but for realpath/exists)."""

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
        """The place `path` names; SFTPNoSuchFile outside every mount, SFTPPermissionDenied
        where a symbolic link leads out of its mount."""
        clean = self.clean(path)
        mount = self.mount_of(clean)
        if mount is None:
            if self.is_virtual(clean):
                return Place(clean, None)
            raise asyncssh.SFTPNoSuchFile(f"{clean} is not in the pod's mounts")
        real = os.path.realpath(mount.source + clean[len(mount.path):])
        root = os.path.realpath(mount.source)
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise asyncssh.SFTPPermissionDenied(
                f"{clean} leads outside its mount {mount.path} (a symbolic link)")
        return Place(clean, mount, real)

    def pod_path(self, place: Place) -> str:
        """The canonical pod path of a place (links resolved inside the mount)."""
        if place.mount is None:
            return place.path
        root = os.path.realpath(place.mount.source)
        rest = place.real[len(root):]
        return place.mount.path + rest if rest else place.mount.path


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
    def _place(self, path: bytes, what: str) -> Place:
        try:
            return self._tree.resolve(path)
        except asyncssh.SFTPError as exc:
            log.info("%s sftp %s %r refused: %s", self._label, what, os.fsdecode(path),
                     exc.reason)
            raise

    def _changeable(self, path: bytes, what: str) -> Place:
        place = self._place(path, what)
        if place.mount is None or not place.mount.writable:
            where = place.mount.path if place.mount else place.path
            log.info("%s sftp %s %r refused: %s is read-only", self._label, what,
                     os.fsdecode(path), where)
            raise asyncssh.SFTPPermissionDenied(f"{where} is read-only")
        return place

    def _stat(self, place: Place) -> asyncssh.SFTPAttrs:
        if place.mount is None:
            return _virtual_attrs()
        try:
            return asyncssh.SFTPAttrs.from_local(os.stat(place.real))
        except OSError as exc:
            raise _os_error(exc) from None

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            raise _os_error(exc) from None

    # -- reading
    def realpath(self, path: bytes) -> bytes:
        return os.fsencode(self._tree.pod_path(self._place(path, "realpath")))

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
        try:
            names = sorted(os.listdir(place.real))
        except OSError as exc:
            raise _os_error(exc) from None
        for name in names:
            child_path = os.fsencode(posixpath.join(place.path, name))
            try:
                attrs = self._stat(self._tree.resolve(child_path))
            except asyncssh.SFTPPermissionDenied:
                log.info("%s sftp list: left out %r (leads outside its mount)", self._label,
                         os.fsdecode(child_path))
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
        return self._call(os.statvfs, place.real)

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
        # The real path has no links left; O_NOFOLLOW keeps one swapped in since from counting.
        fd = self._call(os.open, place.real, flags | os.O_NOFOLLOW | os.O_CLOEXEC, perms)
        return _Handle(fd, writing)

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

    # -- changes (writable mounts only)
    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        place = self._changeable(path, "setstat")
        if attrs.size is not None:
            self._call(os.truncate, place.real, attrs.size)
        if attrs.permissions is not None:
            self._call(os.chmod, place.real, attrs.permissions & 0o777)
        if attrs.atime is not None and attrs.mtime is not None:
            self._call(os.utime, place.real, (attrs.atime, attrs.mtime))

    def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self.setstat(path, attrs)

    def remove(self, path: bytes) -> None:
        self._call(os.remove, self._changeable(path, "remove").real)

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        perms = 0o755 if attrs.permissions is None else attrs.permissions & 0o777
        self._call(os.mkdir, self._changeable(path, "mkdir").real, perms)

    def rmdir(self, path: bytes) -> None:
        place = self._changeable(path, "rmdir")
        if place.mount is None or place.path == place.mount.path:
            raise asyncssh.SFTPPermissionDenied("a mount itself cannot be removed")
        self._call(os.rmdir, place.real)

    def _rename(self, oldpath: bytes, newpath: bytes, replace: bool) -> None:
        old = self._changeable(oldpath, "rename")
        new = self._changeable(newpath, "rename")
        if old.mount != new.mount:
            raise asyncssh.SFTPFailure("cannot move files between mounts")
        if not replace and os.path.lexists(new.real):
            raise asyncssh.SFTPFailure(f"{new.path} exists")
        self._call(os.replace, old.real, new.real)

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
