"""`make image`'s manifest list (scripts/build-image with buildah on the Debian stand-in bases,
as on this machine): one list with a linux/amd64 and a linux/arm64 image, the arm64 one's native
code really aarch64 (ELF e_machine 183), and — where qemu-aarch64-static is installed — its Python
importing the sidecar under emulation. The list is built (cached under ~/.cache/bridge/images by
its inputs: about 4 minutes cold on the shared 2-core machine, nothing warm) with no emulation;
qemu only runs the finished image. Runs in `make test`'s real-cluster pass (needs root for
buildah and chroot); it needs no cluster."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sidecar import protocol
from tests.equipment.realcluster import images

EM_X86_64, EM_AARCH64 = 62, 183
ELF_MACHINE = {"amd64": EM_X86_64, "arm64": EM_AARCH64}
SITE = images.SITE_PACKAGES.lstrip("/")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah (vfs) and chroot need root"),
    pytest.mark.skipif(not (shutil.which("buildah") and shutil.which("debootstrap")),
                       reason="needs buildah and debootstrap (scripts/bootstrap installs them)"),
    pytest.mark.timeout(1200),
]


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (little-endian, 64-bit: both our platforms)."""
    with open(path, "rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert header[4] == 2 and header[5] == 1, f"{path}: not a 64-bit little-endian ELF"
    return int(struct.unpack_from("<H", header, 18)[0])


def extract(tar: tarfile.TarFile, dest: Path) -> None:
    """`tar` unpacked under `dest`, nothing outside it: the "tar" filter where this Python has
    extraction filters (3.11.4 and later); Debian 12's 3.11.2 has none, so the members are
    checked here first (no absolute path, no "..", no link leading out)."""
    if hasattr(tarfile, "tar_filter"):
        tar.extractall(dest, filter="tar")
        return
    for member in tar.getmembers():
        for name in (member.name, member.linkname if member.islnk() else ""):
            if name.startswith("/") or ".." in Path(name).parts:
                raise AssertionError(f"{member.name}: a path out of the archive's root")
    tar.extractall(dest)


@pytest.fixture(scope="module")
def oci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The OCI archive `make image IMAGE_BASE=stand-in` writes, unpacked."""
    result = subprocess.run(
        [sys.executable, str(images.REPO / "scripts/build-image"),
         "--image", protocol.DEFAULT_IMAGE, "--base", "stand-in"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "builder: buildah" in result.stderr  # says which builder it found
    archive = Path(result.stderr.strip().splitlines()[-1].rsplit(": ", 1)[1])
    out = tmp_path_factory.mktemp("oci")
    with tarfile.open(archive) as tar:
        extract(tar, out)
    return out


def blob(oci: Path, digest: str) -> Path:
    return oci / "blobs" / "sha256" / digest.split(":", 1)[1]


def load(oci: Path, digest: str) -> Any:
    return json.loads(blob(oci, digest).read_text())


def platforms(oci: Path) -> dict[str, dict[str, Any]]:
    """{arch: image manifest} of the one manifest list in the archive."""
    top = json.loads((oci / "index.json").read_text())["manifests"]
    assert len(top) == 1, top
    index = load(oci, top[0]["digest"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    return {m["platform"]["architecture"]: load(oci, m["digest"]) for m in index["manifests"]
            if m["platform"]["os"] == "linux"}


@pytest.fixture(scope="module")
def roots(oci: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each platform's root filesystem, its layers unpacked in order."""
    out = {}
    for arch, manifest in platforms(oci).items():
        root = tmp_path_factory.mktemp(f"root-{arch}")
        root.chmod(0o755)  # as an image's / is (mktemp makes it 0700)
        for layer in manifest["layers"]:
            with tarfile.open(blob(oci, layer["digest"])) as tar:
                extract(tar, root)
        out[arch] = root
    return out


def test_one_manifest_list_for_amd64_and_arm64(oci: Path) -> None:
    manifests = platforms(oci)
    assert sorted(manifests) == ["amd64", "arm64"]
    for arch, manifest in manifests.items():
        config = load(oci, manifest["config"]["digest"])
        assert (config["os"], config["architecture"]) == ("linux", arch)
        assert config["config"]["Entrypoint"] == ["python", "-m", "sidecar"]
        assert config["config"]["User"] == "10001:10001"


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_native_code_is_for_the_platform(roots: dict[str, Path], arch: str) -> None:
    """The interpreter, libc, libpython's extension modules and the wheels' compiled parts (the
    lock's cryptography and cffi, fetched for the target) are the platform's ELF files."""
    root = roots[arch]
    site = root / SITE
    natives = [*site.glob("cryptography/hazmat/bindings/_rust*.so"),
               *site.glob("_cffi_backend*.so"),
               root / "usr/bin/python3.11",
               *root.glob("usr/lib/python3.11/lib-dynload/_ssl*.so"),
               *root.glob("usr/lib/*-linux-gnu/libc.so.6")]
    assert len(natives) == 5, natives
    for path in natives:
        assert elf_machine(path) == ELF_MACHINE[arch], path


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_image_env_record_is_the_image_config(oci: Path, roots: dict[str, Path],
                                              arch: str) -> None:
    """podenv's record (made in the build stage) is what the final image declares, so the
    sidecar's `env` leaves out exactly the image's own variables."""
    config = load(oci, platforms(oci)[arch]["config"]["digest"])
    declared = dict(v.split("=", 1) for v in config["config"]["Env"])
    recorded = json.loads((roots[arch] / SITE / "sidecar/image-env.json").read_text())
    assert recorded == declared


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_no_shell_and_a_nologin_user(roots: dict[str, Path], arch: str) -> None:
    root = roots[arch]
    for shell in ("bin/sh", "bin/bash", "bin/dash", "usr/bin/sh", "usr/bin/bash",
                  "usr/bin/dash", "usr/bin/rbash"):
        assert not (root / shell).exists(), shell
    assert "sidecar:x:10001:10001::/nonexistent:/usr/sbin/nologin" in \
        (root / "etc/passwd").read_text().splitlines()


QEMU = shutil.which("qemu-aarch64-static")


@pytest.mark.skipif(QEMU is None, reason="no qemu-aarch64-static (Debian: qemu-user-static) "
                    "to run the arm64 image's Python under emulation")
def test_arm64_python_imports_the_sidecar(roots: dict[str, Path]) -> None:
    """The arm64 image's own Python, emulated (qemu run directly in a chroot of the image: no
    binfmt_misc registration, nothing changed on the machine), imports the sidecar and the
    lock's native code as the image's user."""
    root = roots["arm64"]
    assert QEMU is not None
    shutil.copy2(QEMU, root / "qemu-aarch64")
    code = ("import platform, sidecar.server, asyncssh; "
            "from cryptography.hazmat.bindings import _rust; "
            "print(platform.machine(), asyncssh.__version__)")
    result = subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", "--userspec=10001:10001", str(root),
         "/qemu-aarch64", "/usr/local/bin/python", "-c", code],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/local/bin:/usr/bin", "LANG": "C.UTF-8"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "aarch64"


def test_the_builder_is_the_first_installed_of_buildah_podman_docker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """buildah before podman before docker; docker only with buildx (no engine is needed for
    the check, but a bare docker CLI without buildx cannot build a list)."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("build_image",
                                                  str(images.REPO / "scripts/build-image"))
    spec = importlib.util.spec_from_loader("build_image", loader)
    assert spec is not None
    build_image = importlib.util.module_from_spec(spec)
    loader.exec_module(build_image)

    def install(*tools: str, buildx: bool = True) -> None:
        for old in tmp_path.iterdir():
            old.unlink()
        for tool in tools:
            exit_code = 0 if tool != "docker" or buildx else 1
            (tmp_path / tool).write_text(f"#!/bin/sh\nexit {exit_code}\n")
            (tmp_path / tool).chmod(0o755)
        monkeypatch.setenv("PATH", str(tmp_path))

    install("docker", "podman", "buildah")
    assert build_image.detect("auto") == "buildah"
    install("docker", "podman")
    assert build_image.detect("auto") == "podman"
    install("docker")
    assert build_image.detect("auto") == "docker"
    install("docker", buildx=False)
    with pytest.raises(SystemExit, match="no image builder found"):
        build_image.detect("auto")
    install("buildah")
    with pytest.raises(SystemExit, match="looked for podman"):
        build_image.detect("podman")
