"""SFTP confinement without a check-then-use race (issue 19, item 7).

The review's attack: inside a mount, a directory is swapped again and again for a symbolic link
to a directory outside it while the client reads a file through it; checking the path first and
opening it later let 256 of 3000 reads return the outside file. `open_beneath` walks descriptors
with O_NOFOLLOW, so every read is either the inside file or refused."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncssh
import pytest

from sidecar import files, protocol
from tests.sidecar.harness import ClientKey, running_sidecar

pytestmark = pytest.mark.timeout(120)

INSIDE = "inside the mount\n"
OUTSIDE = "root:x:0:0:OUTSIDE\n"


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    mount = tmp_path / "mount"
    (mount / "d").mkdir(parents=True)
    (mount / "d" / "passwd").write_text(INSIDE)
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_text(OUTSIDE)
    return mount, outside


@contextmanager
def _swapping(mount: Path, outside: Path) -> Iterator[list[int]]:
    """A thread that keeps replacing mount/d by a link to `outside` and back."""
    stop = threading.Event()
    swaps = [0]
    link_name = mount / "d.link"
    real_name = mount / "d.real"
    link_name.symlink_to(outside)

    def run() -> None:
        d = mount / "d"
        while not stop.is_set():
            os.rename(d, real_name)
            os.rename(link_name, d)
            os.rename(d, link_name)
            os.rename(real_name, d)
            swaps[0] += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield swaps
    finally:
        stop.set()
        thread.join(10)


def _count(read: Callable[[], str | None], n: int) -> dict[str, int]:
    seen = {"inside": 0, "outside": 0, "refused": 0}
    for _ in range(n):
        text = read()
        if text is None:
            seen["refused"] += 1
        elif text == OUTSIDE:
            seen["outside"] += 1
        else:
            assert text == INSIDE
            seen["inside"] += 1
    return seen


def test_open_beneath_never_opens_outside_while_a_dir_is_swapped_for_a_link(
        tmp_path: Path) -> None:
    mount, outside = _layout(tmp_path)

    def walk() -> str | None:
        try:
            fd = files.open_beneath(str(mount), "d/passwd", os.O_RDONLY).fd
        except (OSError, asyncssh.SFTPError):
            return None
        with os.fdopen(fd) as f:
            return f.read()

    def check_then_open() -> str | None:  # the old way, the control: the race is real
        try:
            real = os.path.realpath(mount / "d" / "passwd")
            if not real.startswith(str(mount) + "/"):
                return None
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd) as f:
            return f.read()

    with _swapping(mount, outside) as swaps:
        seen = _count(walk, 20000)
        control = _count(check_then_open, 20000)
    assert swaps[0] > 100
    assert seen["outside"] == 0 and seen["inside"] > 0, seen
    assert control["outside"] > 0, control  # without the walk, the same race leaks


def test_sftp_reads_never_return_the_outside_file_during_the_swap(
        tmp_path: Path, key: ClientKey) -> None:
    mount, outside = _layout(tmp_path)
    mounts = [{"path": "/etc/config", "source": str(mount), "writable": False}]
    with running_sidecar(tmp_path, key, extra_env={protocol.ENV_MOUNTS: json.dumps(mounts)}
                         ) as sidecar:
        async def scenario() -> dict[str, int]:
            seen = {"inside": 0, "outside": 0, "refused": 0}
            async with await sidecar.connect(key) as conn, conn.start_sftp_client() as sftp:
                for _ in range(3000):
                    try:
                        async with sftp.open("/etc/config/d/passwd") as f:
                            text = await f.read()
                    except asyncssh.SFTPError:
                        seen["refused"] += 1
                        continue
                    seen["outside" if text == OUTSIDE else "inside"] += 1
                    assert text in (INSIDE, OUTSIDE)
            return seen

        with _swapping(mount, outside) as swaps:
            seen = asyncio.run(scenario())
    assert swaps[0] > 10
    assert seen["outside"] == 0 and seen["inside"] > 0, seen


def test_kubelet_links_inside_the_mount_still_resolve(tmp_path: Path) -> None:
    mount = tmp_path / "cm"
    stamp = mount / "..2024_01_02_03_04_05.1"
    stamp.mkdir(parents=True)
    (stamp / "app.yaml").write_text("a: 1\n")
    (mount / "..data").symlink_to(stamp.name)
    (mount / "app.yaml").symlink_to("..data/app.yaml")
    (mount / "abs.yaml").symlink_to(mount / "..data" / "app.yaml")  # absolute, still inside
    (mount / "up").symlink_to("../cm/app.yaml")  # leaves and comes back: out is out
    for rel in ("app.yaml", "abs.yaml", "..data/app.yaml"):
        opened = files.open_beneath(str(mount), rel, os.O_RDONLY)
        with os.fdopen(opened.fd) as f:
            assert f.read() == "a: 1\n"
        assert opened.parts == [stamp.name, "app.yaml"]
    with pytest.raises(files.Outside):
        files.open_beneath(str(mount), "up", os.O_RDONLY)
    loop = mount / "loop"
    loop.symlink_to("loop")
    with pytest.raises(OSError) as e:
        files.open_beneath(str(mount), "loop", os.O_RDONLY)
    assert e.value.errno == errno.ELOOP
