"""Fixtures shared by the sidecar tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sidecar.harness import ClientKey, make_key


@pytest.fixture
def key(tmp_path: Path) -> ClientKey:
    """The developer's key: the one the sidecar under test authorizes."""
    return make_key(tmp_path, "id_bridge")
