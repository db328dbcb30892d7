"""The images the real cluster runs, built here (no registry can be reached from it) and cached
under ~/.cache/bridge/images by the hash of what goes into them:

- the pod sandbox (`pause`) and CoreDNS: one static binary each, in a single-layer image;
- `docker.io/library/python:3.11-slim`: a Debian bookworm root from debootstrap with Python 3.11,
  pip and venv, laid out like the official image (`python` on PATH, pip allowed to install,
  /usr/local/lib/python3.11/site-packages on sys.path), so ordinary manifests and the sidecar
  Dockerfile's `FROM` find it without a registry; for arm64 (`python_base_image(log, "arm64")`)
  the same root assembled without running anything of it: Debian's arm64 packages unpacked
  (`debootstrap --foreign`, then every package extracted), no emulation;
- the sidecar, built by buildah from `sidecar/Dockerfile` itself on that base (the Dockerfile
  cross-builds: its RUNs run on this machine's platform, so arm64 needs no emulation either).

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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .gobuild import CACHE

IMAGES = CACHE / "images"
REPO = Path(__file__).resolve().parents[3]

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
FOREIGN_RECIPE_VERSION = "1"  # bump when unpack_foreign changes

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


# Debian's architecture names are the OCI ones for these two; arm64 images carry variant v8.
ARCHES = ("amd64", "arm64")
_VARIANT = {"arm64": "v8"}


def image_config(diff_ids: Iterable[str], env: Iterable[str] = (),
                 entrypoint: list[str] | None = None, cmd: list[str] | None = None,
                 user: str = "", workdir: str = "", arch: str = "amd64") -> bytes:
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
    platform = {"architecture": arch, "os": "linux"}
    if arch in _VARIANT:
        platform["variant"] = _VARIANT[arch]
    return json.dumps({
        **platform, "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": "bridge tests/equipment/realcluster/images.py"}],
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


def python_base_name(arch: str = "amd64") -> str:
    """The stand-in's local name: the official one for this machine's amd64, one per platform
    otherwise (local storage holds one image per name)."""
    return PYTHON_IMAGE if arch == "amd64" else f"bridge.local/python:3.11-slim-{arch}"


def unpack_foreign(root: Path) -> None:
    """Finish a `debootstrap --foreign` root without running any of it: extract every package
    its second stage would install (the first stage extracted only the required ones) and write
    what maintainer scripts would have written and the sidecar needs (the users and groups of
    base-passwd). Nothing is configured: no dpkg database, no generated CA bundle (the sidecar
    opens no TLS connection); the loader finds the libraries in its built-in multiarch paths."""
    debpaths = (root / "debootstrap/debpaths").read_text().split()
    for deb in debpaths[1::2]:
        subprocess.run(["dpkg-deb", "--extract", str(root / deb.lstrip("/")), str(root)],
                       check=True)
    for name in ("passwd", "group"):
        master = root / f"usr/share/base-passwd/{name}.master"
        if not (root / "etc" / name).exists():
            shutil.copyfile(master, root / "etc" / name)
            (root / "etc" / name).chmod(0o644)
    shutil.rmtree(root / "debootstrap")


def python_base_image(log: Log, arch: str = "amd64") -> Image:
    """docker.io/library/python:3.11-slim made from Debian's packages (debootstrap); for a
    foreign `arch`, unpacked only (no emulation)."""
    if arch not in ARCHES:
        raise ValueError(f"no stand-in base for {arch}; one of {', '.join(ARCHES)}")
    name = python_base_name(arch)
    recipe: tuple[str, ...] = (PYTHON_IMAGE, DEBIAN_SUITE, DEBIAN_MIRROR, *BASE_PACKAGES,
                               *PYTHON_ENV, BASE_RECIPE_VERSION)
    if arch != "amd64":  # the amd64 key is unchanged: the real cluster's cached base stays valid
        recipe = (*recipe, arch, FOREIGN_RECIPE_VERSION)
    archive = _cached(recipe, "python-3.11-slim" + ("" if arch == "amd64" else f"-{arch}"))
    if archive.exists():
        return Image(name, archive)
    IMAGES.mkdir(parents=True, exist_ok=True)
    with open(IMAGES / ".base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return Image(name, archive)
        native = arch == host_arch()
        log(f"building {name} with debootstrap ({DEBIAN_SUITE} {arch}, "
            f"{', '.join(BASE_PACKAGES)}{'' if native else ', unpacked only'}); about a minute")
        with tempfile.TemporaryDirectory(dir=IMAGES) as tmp:
            root = Path(tmp) / "root"
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 *([] if native else ["--foreign", f"--arch={arch}"]),
                 DEBIAN_SUITE, str(root), DEBIAN_MIRROR],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if result.returncode != 0:
                tail = "\n".join(result.stdout.splitlines()[-10:])
                raise RuntimeError(f"debootstrap failed:\n{tail}")
            if not native:
                unpack_foreign(root)
            base_adjust(root)
            layer = Path(tmp) / "layer.tar"
            subprocess.run(
                ["tar", "--numeric-owner", "--xattrs", "--sort=name", "-C", str(root),
                 "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                 "--exclude=./run/*", "--exclude=./tmp/*", "-cf", str(layer), "."],
                check=True)
            config = image_config([_sha256_file(layer)], env=PYTHON_ENV, cmd=["python3"],
                                  arch=arch)
            write_archive(archive, name, layer, config)
    log(f"built image {name}")
    return Image(name, archive)


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


def host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _context(tmp: Path) -> Path:
    """Only what the Dockerfile may use, not the whole checkout."""
    context = tmp / "context"
    for src in sidecar_sources():
        dst = context / src.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return context


def _bud(storage: Path, context: Path, arch: str, base: Image | None, build_base: Image | None,
         *extra: str) -> list[str]:
    """`buildah bud` of sidecar/Dockerfile for one platform. With stand-in bases (local, never
    pulled) BASE names the target's and BUILD_BASE this machine's; without, the Dockerfile's
    pinned official base is pulled (its index has both platforms)."""
    ca = "/etc/ssl/certs/ca-certificates.crt"
    # --pull=always on the official base: one name (the index digest) for both platforms; a
    # local image of the other platform would otherwise be taken with only a warning.
    stand_in = (["--pull=never", "--build-arg", f"BASE={base.name}",
                 "--build-arg", f"BUILD_BASE={build_base.name}"]
                if base is not None and build_base is not None else ["--pull=always"])
    return buildah(
        storage, "bud", "--quiet", "--isolation", "chroot", "--network", "host", *stand_in,
        "--runtime", shutil.which("runc") or "runc", "--platform", f"linux/{arch}",
        # buildah (1.28) leaves BUILDPLATFORM unset; docker and podman set it themselves
        "--build-arg", f"BUILDPLATFORM=linux/{host_arch()}",
        *(["--volume", f"{ca}:{ca}:ro"] if os.path.exists(ca) else []),
        *extra, "-f", str(context / "sidecar" / "Dockerfile"), str(context))


def _run_steps(steps: Iterable[list[str]]) -> None:
    for step in steps:
        result = subprocess.run(step, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-15:])
            raise RuntimeError(f"buildah {step[7]} failed:\n{tail}")


def _clean_storage(storage: Path) -> None:
    subprocess.run(buildah(storage, "rm", "--all"), capture_output=True)
    subprocess.run(buildah(storage, "rmi", "--all", "--force"), capture_output=True)


def sidecar_image(name: str, base: Image, log: Log) -> Image:
    """The sidecar image (this machine's platform, amd64) built by buildah from
    sidecar/Dockerfile on `base`, cached by the sidecar sources (Dockerfile and lock included)
    and the base archive."""
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
            storage, context = Path(tmp) / "storage", _context(Path(tmp))
            try:
                _run_steps([
                    buildah(storage, "pull", "--quiet", f"docker-archive:{base.archive}"),
                    _bud(storage, context, host_arch(), base, base, "-t", name),
                    buildah(storage, "push", "--quiet", name,
                            f"docker-archive:{archive}.tmp:{name}"),
                ])
            finally:
                _clean_storage(storage)
            os.replace(f"{archive}.tmp", archive)
    log(f"built image {name}")
    return Image(name, archive)


def multiarch_sidecar(name: str, arches: Iterable[str], log: Log, stand_in: bool,
                      push: str = "", digestfile: Path | None = None) -> Path:
    """One manifest list `name` with the sidecar for every arch in `arches`, built by buildah
    from sidecar/Dockerfile (cross-built: no emulation), written as an OCI archive (an image
    index) cached under ~/.cache/bridge/images by its inputs; with `push` (a buildah
    destination such as docker://ghcr.io/o/sidecar:v1) pushed there too, its digest written to
    `digestfile`. `stand_in`: on tests' Debian bases built here, else the Dockerfile's pinned
    official base (needs a registry)."""
    arches = list(arches)
    bases = {arch: python_base_image(log, arch) for arch in arches} if stand_in else {}
    build_base = python_base_image(log, host_arch()) if stand_in else None
    key = (name, _tree_hash(sidecar_sources()), *arches,
           *(sorted(b.archive.name for b in bases.values())), "official" if not stand_in else "")
    archive = _cached(key, "sidecar-multiarch").with_suffix(".oci.tar")
    if archive.exists() and not push:
        log(f"cached: {archive}")
        return archive
    IMAGES.mkdir(parents=True, exist_ok=True)
    with open(IMAGES / ".sidecar.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with tempfile.TemporaryDirectory(dir=IMAGES) as tmp:
            storage, context = Path(tmp) / "storage", _context(Path(tmp))
            steps = [buildah(storage, "pull", "--quiet", f"docker-archive:{b.archive}")
                     for b in {*bases.values(), *([build_base] if build_base else [])}]
            steps.append(buildah(storage, "manifest", "create", name))
            for arch in arches:
                steps.append(_bud(storage, context, arch, bases.get(arch), build_base,
                                  "--manifest", name))
            steps.append(buildah(storage, "manifest", "push", "--quiet", "--all", name,
                                 f"oci-archive:{archive}.tmp:{name}"))
            if push:
                steps.append(buildah(storage, "manifest", "push", "--all",
                                     *(["--digestfile", str(digestfile)] if digestfile else []),
                                     name, push))
            try:
                started = time.monotonic()
                log(f"building {name} for {', '.join(arches)} from sidecar/Dockerfile with "
                    f"buildah ({'stand-in' if stand_in else 'official'} base)")
                _run_steps(steps)
            finally:
                _clean_storage(storage)
            os.replace(f"{archive}.tmp", archive)
    log(f"built {name} ({', '.join(arches)}) in {time.monotonic() - started:.0f} s: {archive}")
    return archive
