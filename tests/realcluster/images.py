"""The images the real cluster runs, built here (no registry can be reached from it) and cached
under ~/.cache/bridge/images by the hash of what goes into them:

- the pod sandbox (`pause`) and CoreDNS: one static binary each, in a single-layer image;
- `docker.io/library/python:3.11-slim`: a Debian bookworm root from debootstrap with Python 3.11,
  pip and venv, laid out like the official image (`python` on PATH, pip allowed to install,
  /usr/local/lib/python3.11/site-packages on sys.path), so ordinary manifests and the sidecar
  Dockerfile's `FROM` find it without a registry;
- the sidecar, built by buildah from `sidecar/Dockerfile` itself on that base.

Images are written as docker-archive tarballs (what `docker save` writes and both `ctr images
import` and buildah read).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .gobuild import CACHE

IMAGES = CACHE / "images"
REPO = Path(__file__).resolve().parents[2]

PAUSE_IMAGE = "bridge.local/pause:1"
COREDNS_IMAGE = "bridge.local/coredns:v1.15.0"
PYTHON_IMAGE = "docker.io/library/python:3.11-slim"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
# The official image's environment (python:3.11-slim-bookworm), as far as a Debian Python has it.
PYTHON_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "LANG=C.UTF-8", "PYTHON_VERSION=3.11")
SITE_PACKAGES = "/usr/local/lib/python3.11/site-packages"
BASE_RECIPE_VERSION = "1"  # bump when base_adjust changes

Log = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    name: str
    archive: Path  # docker-archive tarball


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def image_config(diff_ids: Iterable[str], env: Iterable[str] = (),
                 entrypoint: list[str] | None = None, cmd: list[str] | None = None,
                 user: str = "", workdir: str = "") -> bytes:
    """An OCI/docker image configuration (what `docker inspect` shows as Config)."""
    config: dict[str, object] = {"Env": list(env)}
    if entrypoint:
        config["Entrypoint"] = entrypoint
    if cmd:
        config["Cmd"] = cmd
    if user:
        config["User"] = user
    if workdir:
        config["WorkingDir"] = workdir
    return json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": "bridge tests/realcluster/images.py"}],
    }, sort_keys=True).encode()


def write_archive(out: Path, name: str, layer: Path, config: bytes) -> None:
    """A docker-archive tarball of a one-layer image tagged `name`."""
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = _sha256_file(layer) + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name],
                            "Layers": [layer_name]}]).encode()
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(layer, arcname=layer_name)
    os.replace(tmp, out)


def _single_file_layer(binary: Path, target: str, out: Path) -> None:
    """A reproducible layer holding one executable (fixed owner and mtime)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(binary, arcname=target.lstrip("/"))
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755
        with open(binary, "rb") as f:
            tar.addfile(info, f)


def _cached(key_parts: Iterable[bytes | str], stem: str) -> Path:
    h = hashlib.sha256()
    for part in key_parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return IMAGES / f"{stem}-{h.hexdigest()[:16]}.tar"


def binary_image(name: str, binary: Path, target: str, args: list[str], log: Log) -> Image:
    """A one-binary image (pause, CoreDNS), cached by the binary's content."""
    archive = _cached((name, _sha256_file(binary), target, *args), stem=name.split("/")[-1]
                      .replace(":", "-"))
    if archive.exists():
        return Image(name, archive)
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=IMAGES) as tmp:
        layer = Path(tmp) / "layer.tar"
        _single_file_layer(binary, target, layer)
        config = image_config([_sha256_file(layer)], env=["PATH=/"], entrypoint=[target, *args])
        write_archive(archive, name, layer, config)
    log(f"built image {name}")
    return Image(name, archive)


def base_adjust(root: Path) -> None:
    """Make a debootstrapped Debian root look like the official python:3.11-slim to what runs
    in it: `python`/`pip` on PATH, pip installs allowed (no EXTERNALLY-MANAGED marker), the
    official site-packages directory importable, no package caches."""
    local_bin = root / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    for link, target in (("python", "/usr/bin/python3"), ("python3", "/usr/bin/python3"),
                         ("pip", "/usr/bin/pip3"), ("pip3", "/usr/bin/pip3")):
        (local_bin / link).unlink(missing_ok=True)
        (local_bin / link).symlink_to(target)
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    (root / SITE_PACKAGES.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/python3/dist-packages/official-layout-site-packages.pth").write_text(
        SITE_PACKAGES + "\n")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (root / cache).glob("*"):
            if f.is_file():
                f.unlink()


def python_base_image(log: Log) -> Image:
    """docker.io/library/python:3.11-slim made from Debian's packages (debootstrap)."""
    recipe = (PYTHON_IMAGE, DEBIAN_SUITE, DEBIAN_MIRROR, *BASE_PACKAGES, *PYTHON_ENV,
              BASE_RECIPE_VERSION)
    archive = _cached(recipe, "python-3.11-slim")
    if archive.exists():
        return Image(PYTHON_IMAGE, archive)
    IMAGES.mkdir(parents=True, exist_ok=True)
    with open(IMAGES / ".base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return Image(PYTHON_IMAGE, archive)
        log(f"building {PYTHON_IMAGE} with debootstrap ({DEBIAN_SUITE}, "
            f"{', '.join(BASE_PACKAGES)}); about a minute")
        with tempfile.TemporaryDirectory(dir=IMAGES) as tmp:
            root = Path(tmp) / "root"
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 DEBIAN_SUITE, str(root), DEBIAN_MIRROR],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if result.returncode != 0:
                tail = "\n".join(result.stdout.splitlines()[-10:])
                raise RuntimeError(f"debootstrap failed:\n{tail}")
            base_adjust(root)
            layer = Path(tmp) / "layer.tar"
            subprocess.run(
                ["tar", "--numeric-owner", "--xattrs", "--sort=name", "-C", str(root),
                 "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                 "--exclude=./run/*", "--exclude=./tmp/*", "-cf", str(layer), "."],
                check=True)
            config = image_config([_sha256_file(layer)], env=PYTHON_ENV, cmd=["python3"])
            write_archive(archive, PYTHON_IMAGE, layer, config)
    log(f"built image {PYTHON_IMAGE}")
    return Image(PYTHON_IMAGE, archive)


def _tree_hash(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def sidecar_sources() -> list[Path]:
    return [p for p in (REPO / "sidecar").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def buildah(storage: Path, *args: str) -> list[str]:
    return ["buildah", "--storage-driver", "vfs", "--root", str(storage / "root"),
            "--runroot", str(storage / "run"), *args]


def sidecar_image(name: str, base: Image, log: Log) -> Image:
    """The sidecar image built by buildah from sidecar/Dockerfile on `base`, cached by the
    sidecar sources and the base archive."""
    sources = sidecar_sources()
    archive = _cached((name, _tree_hash(sources), base.archive.name), "sidecar")
    if archive.exists():
        return Image(name, archive)
    IMAGES.mkdir(parents=True, exist_ok=True)
    with open(IMAGES / ".sidecar.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return Image(name, archive)
        log(f"building {name} from sidecar/Dockerfile with buildah")
        with tempfile.TemporaryDirectory(dir=IMAGES) as tmp:
            storage, context = Path(tmp) / "storage", Path(tmp) / "context"
            for src in sources:  # only what the Dockerfile may use, not the whole checkout
                dst = context / src.relative_to(REPO)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            ca = "/etc/ssl/certs/ca-certificates.crt"
            steps = [
                buildah(storage, "pull", "--quiet", f"docker-archive:{base.archive}"),
                buildah(storage, "bud", "--quiet", "--isolation", "chroot", "--network", "host",
                        "--pull=never", "--runtime", shutil.which("runc") or "runc",
                        "--build-arg", f"BASE={base.name}",
                        *(["--volume", f"{ca}:{ca}:ro"] if os.path.exists(ca) else []),
                        "-f", str(context / "sidecar" / "Dockerfile"), "-t", name, str(context)),
                buildah(storage, "push", "--quiet", name,
                        f"docker-archive:{archive}.tmp:{name}"),
            ]
            try:
                for step in steps:
                    result = subprocess.run(step, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
                    if result.returncode != 0:
                        tail = "\n".join(result.stdout.splitlines()[-15:])
                        raise RuntimeError(f"buildah {step[7]} failed:\n{tail}")
            finally:
                subprocess.run(buildah(storage, "rm", "--all"), capture_output=True)
                subprocess.run(buildah(storage, "rmi", "--all", "--force"), capture_output=True)
            os.replace(f"{archive}.tmp", archive)
    log(f"built image {name}")
    return Image(name, archive)
