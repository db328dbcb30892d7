"""The sidecar's mount list setting (BRIDGE_MOUNTS): parsed strictly, refused with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import files, protocol
from sidecar import settings as settings_mod
from tests.sidecar.harness import REPO, ClientKey, base_env


def test_parse_mounts() -> None:
    assert files.parse_mounts("") == ()
    got = files.parse_mounts(json.dumps([
        {"path": "/etc/config/", "writable": False},
        {"path": "/data", "source": "/srv/data", "writable": True}]))
    assert got == (files.Mount("/etc/config", "/etc/config", False),
                   files.Mount("/data", "/srv/data", True))


@pytest.mark.parametrize("raw,message", [
    ("{", "must be a JSON list"),
    ('{"path": "/x"}', "must be a JSON list"),
    ('[{"path": "/"}]', "must not be /"),
    ('[{"path": "//"}]', "must not be /"),
    ('[{"path": "/a/.."}]', "must not be /"),
    ('[{"path": "etc/config"}]', "absolute path"),
    ('[{"path": "/x", "source": "rel"}]', "absolute path"),
    ('[{"path": "/x", "writable": "yes"}]', "true or false"),
    ('[{"path": "/x"}, {"path": "/x/"}]', "listed twice"),
    ('[{"path": "/x", "mode": "rw"}]', "each mount is an object"),
    ('["/x"]', "each mount is an object"),
])
def test_bad_mount_lists_are_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        files.parse_mounts(raw)


def test_a_bad_mount_list_stops_the_sidecar_with_one_line(key: ClientKey, tmp_path: Path
                                                          ) -> None:
    env = base_env(**{protocol.ENV_AUTHORIZED_KEY: key.public_line, protocol.ENV_PORTS: "",
                      protocol.ENV_MOUNTS: '[{"path": "/"}]'})
    result = subprocess.run([sys.executable, "-m", "sidecar"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and protocol.ENV_MOUNTS in lines[0] and "nothing was started" in lines[0]


def test_settings_carry_the_mounts(key: ClientKey) -> None:
    s = settings_mod.load({protocol.ENV_AUTHORIZED_KEY: key.public_line, protocol.ENV_PORTS: "",
                           protocol.ENV_MOUNTS: '[{"path": "/etc/config"}]'})
    assert s.mounts == (files.Mount("/etc/config", "/etc/config", False),)
    s = settings_mod.load({protocol.ENV_AUTHORIZED_KEY: key.public_line, protocol.ENV_PORTS: ""})
    assert s.mounts == ()
