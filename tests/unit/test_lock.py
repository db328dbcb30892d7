"""The lock files agree: the sidecar image installs the versions (and hashes) the tests ran."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a hashed requirements file as `uv pip compile` writes it."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if m:
            hashes = frozenset(re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
            out[m.group(1).lower()] = (m.group(2), hashes)
    return out


def test_every_lock_entry_is_pinned_and_hashed() -> None:
    lock = pins(ROOT / "requirements" / "lock.txt")
    assert {"asyncssh", "cryptography", "kubernetes", "click", "setuptools", "uv"} <= set(lock)
    assert all(hashes for _, hashes in lock.values())


def test_sidecar_requirements_are_the_locks_versions() -> None:
    lock = pins(ROOT / "requirements" / "lock.txt")
    sidecar = pins(ROOT / "sidecar" / "requirements.txt")
    assert {"asyncssh", "cryptography"} <= set(sidecar)
    # nothing of the agent's (the image carries only the SSH server's dependencies)
    assert not {"kubernetes", "aiohttp", "click"} & set(sidecar)
    for name, (version, hashes) in sidecar.items():
        assert name in lock, name
        assert version == lock[name][0], name
        assert hashes and hashes <= lock[name][1], name
