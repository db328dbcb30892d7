"""The sidecar's SFTP server (sidecar/files.py) against OpenSSH's `sftp`, the real client.

The mounts are temporary directories built like the kubelet builds ConfigMap and Secret
volumes (a symlink farm: `app.yaml -> ..data/app.yaml`, `..data -> ..2024_...`), plus the
escapes an attacker with write access to a volume could plant.
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import protocol
from tests.sidecar.harness import (
    APP_YAML,
    TLS_KEY,
    ClientKey,
    Pod,
    Sidecar,
    make_key,
    make_pod,
    running_sidecar,
)

SFTP = "/usr/bin/sftp"


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return make_pod(tmp_path, writable_data=False)


@pytest.fixture
def sidecar(tmp_path: Path, key: ClientKey, pod: Pod) -> Iterator[Sidecar]:
    env = {protocol.ENV_MOUNTS: json.dumps(pod.mounts)}
    with running_sidecar(tmp_path, key, extra_env=env) as sc:
        yield sc


def sftp(sc: Sidecar, key: ClientKey, *commands: str, cwd: Path | None = None,
         ) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH's sftp with a batch of commands; it stops at the first that fails."""
    argv = [
        SFTP, "-F", "/dev/null", "-i", str(key.path),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={sc.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10", "-P", str(sc.ssh_port), "-b", "-", "developer@127.0.0.1",
    ]
    return subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_reads_inside_the_mounts_work(sidecar: Sidecar, key: ClientKey, tmp_path: Path) -> None:
    got = tmp_path / "got"
    got.mkdir()
    result = sftp(sidecar, key, "ls -a /", "ls -a /etc", "ls -a /etc/config",
                  "get /etc/config/app.yaml", "get /var/run/secrets/app/tls.key",
                  "get /data/prepared.txt", "cd /etc/config/..data", "get app.yaml again.yaml",
                  "pwd", cwd=got)
    assert result.returncode == 0, result.stderr
    assert (got / "app.yaml").read_text() == APP_YAML
    assert (got / "again.yaml").read_text() == APP_YAML
    assert (got / "tls.key").read_text() == TLS_KEY
    assert (got / "prepared.txt").read_text() == "written by an init container\n"
    listing = result.stdout
    # the virtual root shows only the way to the mounts; a mount lists its files, and the
    # links that lead out of it are left out
    root_names = names(listing.split("sftp> ls -a /\n")[1].split("sftp> ")[0])
    assert root_names == {".", "..", "etc", "var", "data"}
    etc_names = names(listing.split("sftp> ls -a /etc\n")[1].split("sftp> ")[0])
    assert etc_names == {".", "..", "config"}
    config_names = names(listing.split("sftp> ls -a /etc/config\n")[1].split("sftp> ")[0])
    assert config_names == {".", "..", "app.yaml", "..data", "..2024_01_02_03_04_05.123456789"}
    # a canonical path is a pod path, never the sidecar's real one
    assert "Remote working directory: /etc/config/..2024_01_02_03_04_05.123456789" in listing
    assert str(tmp_path) not in listing


@pytest.mark.parametrize("command", [
    "get /etc/passwd",
    "get /etc/config/../../etc/passwd",
    "get ../../../../etc/passwd",
    "get /etc/config/../../../../../../etc/hostname",
    "ls /tmp",
    "ls /etc/config/../..//proc/self",
    "get /proc/self/environ",
])
def test_path_traversal_is_refused(sidecar: Sidecar, key: ClientKey, tmp_path: Path,
                                   command: str) -> None:
    result = sftp(sidecar, key, command, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert not any(p.name in ("passwd", "hostname", "environ") for p in tmp_path.iterdir())


def test_the_sidecars_real_paths_are_not_reachable(sidecar: Sidecar, key: ClientKey,
                                                   pod: Pod, tmp_path: Path) -> None:
    """The volumes' real location (here a host directory) is no pod path."""
    result = sftp(sidecar, key, f"get {pod.root}/configmap/app.yaml", cwd=tmp_path)
    assert result.returncode != 0
    result = sftp(sidecar, key, f"get {tmp_path}/outside.txt got.txt", cwd=tmp_path)
    assert result.returncode != 0
    assert not (tmp_path / "got.txt").exists()


@pytest.mark.parametrize("command", [
    "get /etc/config/etc-link/passwd",
    "ls /etc/config/etc-link",
    "get /etc/config/passwd-link",
    "get /data/to-secret/tls.key",  # a link into another mount still leaves its own
])
def test_symlinks_leading_out_of_their_mount_are_refused(
        sidecar: Sidecar, key: ClientKey, tmp_path: Path, command: str) -> None:
    got = tmp_path / "got"
    got.mkdir()
    result = sftp(sidecar, key, command, cwd=got)
    assert result.returncode != 0, result.stdout
    assert list(got.iterdir()) == []
    assert "leads outside its mount" in sidecar.log()


@pytest.mark.parametrize("command", [
    "put {local} /etc/config/new.yaml",
    "put {local} /etc/config/app.yaml",
    "put {local} /data/new.txt",  # /data is writable in the pod, but --mount-rw was not asked
    "rm /etc/config/app.yaml",
    "rm /data/prepared.txt",
    "mkdir /data/dir",
    "rmdir /etc/config/..data",
    "rename /data/prepared.txt /data/moved.txt",
    "chmod 777 /data/prepared.txt",
    "symlink /etc /data/etc",
    "mkdir /newdir",
    "put {local} /new.txt",
])
def test_writes_are_refused_in_read_only_mode(
        sidecar: Sidecar, key: ClientKey, pod: Pod, tmp_path: Path, command: str) -> None:
    local = tmp_path / "local.txt"
    local.write_text("overwritten\n")
    before = snapshot(pod.root)
    result = sftp(sidecar, key, command.format(local=local), cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert snapshot(pod.root) == before


def test_writable_mount_accepts_writes_only_where_allowed(
        tmp_path: Path, key: ClientKey) -> None:
    pod = make_pod(tmp_path, writable_data=True)
    local = tmp_path / "local.txt"
    local.write_text("from the laptop\n")
    env = {protocol.ENV_MOUNTS: json.dumps(pod.mounts)}
    with running_sidecar(tmp_path, key, extra_env=env) as sc:
        ok = sftp(sc, key, f"put {local} /data/new.txt", "mkdir /data/dir",
                  "rename /data/new.txt /data/dir/moved.txt", cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        assert (pod.root / "emptydir/dir/moved.txt").read_text() == "from the laptop\n"
        before = snapshot(pod.root)
        for command in (f"put {local} /etc/config/app.yaml", "symlink /etc /data/etc",
                        f"put {local} /data/to-secret/tls.key", "rmdir /data"):
            assert sftp(sc, key, command, cwd=tmp_path).returncode != 0, command
        assert snapshot(pod.root) == before


def test_a_connection_without_the_session_key_gets_nothing(
        sidecar: Sidecar, tmp_path: Path) -> None:
    stranger = make_key(tmp_path, "id_stranger")
    result = sftp(sidecar, stranger, "get /etc/config/app.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    assert not (tmp_path / "app.yaml").exists()
    assert "rejected key" in sidecar.wait_log("rejected key")


def test_without_mounts_sftp_is_refused_and_commands_still_work(
        tmp_path: Path, key: ClientKey) -> None:
    with running_sidecar(tmp_path, key) as sc:
        result = sftp(sc, key, "ls /", cwd=tmp_path)
        assert result.returncode != 0
        assert "subsystem 'sftp' refused" in sc.log()


def test_commands_work_on_a_sidecar_serving_files(sidecar: Sidecar, key: ClientKey) -> None:
    result = sidecar.ssh(key, protocol.CMD_VERSION)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["protocol"] == protocol.PROTOCOL_VERSION
    refused = sidecar.ssh(key, "cat /etc/passwd")
    assert refused.returncode != 0


def names(listing: str) -> set[str]:
    return {posixpath.basename(word) or word for word in listing.split()}


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under root: kind, mode, and content or link target."""
    found: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                found[str(p)] = ("link", st.st_mode, os.readlink(p))
            elif p.is_dir():
                found[str(p)] = ("dir", st.st_mode, "")
            else:
                found[str(p)] = ("file", st.st_mode, p.read_text())
    return found
