"""The wheel people install (pipx install bridge-k8s): it carries bridge and the sidecar, SPDX
license metadata, the `bridge` command, and that command runs from the installed wheel, not
from this source tree. Offline: the wheel is built with the venv's setuptools (the lock's), and
the fresh environment borrows this venv's dependencies (a path, not its .pth files, so this
checkout's editable install does not leak in)."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from bridge import __version__
from sidecar import protocol

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_and_bridge_runs_from_it(tmp_path: Path) -> None:
    # from a copy: setuptools builds in the source tree (build/, *.egg-info)
    src, dist = tmp_path / "src", tmp_path / "dist"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("bridge", "sidecar"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "-w", str(dist),
                    str(src)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = dist.glob("bridge_k8s-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"bridge_k8s-{__version__}.dist-info/METADATA").decode()
        entry_points = z.read(f"bridge_k8s-{__version__}.dist-info/entry_points.txt").decode()
    assert {"bridge/cli.py", "bridge/swap/session.py", "sidecar/__main__.py"} <= names
    assert not any(n.startswith("tests/") for n in names)
    assert f"Version: {__version__}\n" in meta
    assert "License-Expression: Apache-2.0\n" in meta
    assert "bridge = bridge.cli:main" in entry_points

    env_dir = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=120)
    fresh_python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh_python), "install",
                    "-q", "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    purelib = subprocess.run([str(fresh_python), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).exists()] or \
        [sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "borrowed-deps.pth").write_text("\n".join(deps) + "\n")

    run = subprocess.run([str(env_dir / "bin" / "bridge"), "--version"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout.splitlines() == [f"bridge {__version__}",
                                       f"sidecar image: {protocol.DEFAULT_IMAGE}"]
    where = subprocess.run([str(fresh_python), "-c", "import bridge.cli; print(bridge.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path,
                           env={"PATH": "/usr/bin:/bin"})
    assert where.stdout.strip().startswith(purelib), where
