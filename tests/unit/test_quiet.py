"""bridge.quiet: dependencies' warnings and log records stay off the user's terminal; bridge's
own warnings and the user's -W stay as they were."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator

import pytest

from bridge import quiet


@pytest.fixture
def clean_slate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Filters and root handlers as a fresh `bridge` process has them; put back afterwards."""
    monkeypatch.setattr(sys, "warnoptions", [])
    root = logging.getLogger()
    handlers = list(root.handlers)
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")  # what Python shows with no filter of ours
        yield
    root.handlers[:] = handlers


def shown(module: str, category: type[Warning] = UserWarning) -> bool:
    """Whether a warning attributed to `module` passes the filters."""
    with warnings.catch_warnings(record=True) as seen:
        # catch_warnings(record=True) keeps the filters it found; the registry is fresh
        warnings.warn_explicit("w", category, f"{module.replace('.', '/')}.py", 1,
                               module=module, registry={})
    return bool(seen)


def test_dependencies_warnings_are_ignored_bridges_stay(clean_slate: None) -> None:
    assert shown("asyncssh.crypto.misc")  # before: Python shows it
    quiet.dependencies()
    for dependency in ("asyncssh.crypto.misc", "cryptography.utils", "kubernetes.client",
                       "aiohttp.connector", "bridgework", "bridges.x", "sidecar.server"):
        assert not shown(dependency), dependency
    for own in ("bridge", "bridge.cli", "bridge.transport.tunnel"):
        assert shown(own), own
    assert shown("bridge.swap.session", RuntimeWarning)


def test_an_explicit_warnings_option_is_respected(clean_slate: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "warnoptions", ["default"])
    quiet.dependencies()
    assert shown("asyncssh.crypto.misc")


def test_dependency_log_records_do_not_reach_stderr(clean_slate: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger().handlers[:] = []
    quiet.dependencies()
    logging.getLogger("kubernetes.client.rest").warning("a dependency speaks")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    assert capsys.readouterr().err == ""


def test_asyncssh_imports_silently_after_the_filter() -> None:
    """The real case (asyncssh 2.24 under cryptography 51 warns about DSA at import)."""
    code = "from bridge import quiet; quiet.dependencies(); import asyncssh"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
