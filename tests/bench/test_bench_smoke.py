"""Smoke test of the benchmark harness: tiny sizes over the loopback and OpenSSH paths (and the
bridge tunnel when it is there). Checks the shape of the results and that every figure is a
positive measurement; never how fast anything is.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from tests.equipment.bench import report, runner, wrk

TINY = runner.Config(
    rounds=1, bulk_seconds=0.05, bulk_calibrate_bytes=1024 * 1024, rtt_count=50,
    rtt_seconds=0.5, connect_count=10, connect_seconds=0.5, wrk_seconds=1.0,
    wrk_connections=2, burst_connections=50, burst_rounds=1, burst_timeout=30.0,
)
RATE_AND_TIME = ("upload", "download", "rtt_p50", "rtt_p99", "connect_p50", "connect_p99",
                 "burst_seconds")

needs_openssh = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/sbin/sshd", os.X_OK) or not shutil.which("ssh"),
    reason="the OpenSSH reference needs root, /usr/sbin/sshd and ssh",
)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _check_path(doc: dict, path: str) -> None:
    figs = doc["figures"]
    for key in RATE_AND_TIME:
        entry = figs[key]["paths"][path]
        assert "error" not in entry, (key, entry)
        assert entry["value"] > 0, (key, entry)
        assert all(r > 0 for r in entry["rounds"])
    assert figs["burst_errors"]["paths"][path]["value"] == 0
    if wrk.available():
        for key in ("http_keepalive", "http_newconn"):
            assert figs[key]["paths"][path]["value"] > 0
        assert figs["http_errors"]["paths"][path]["value"] == 0


@needs_openssh
def test_loopback_and_openssh(tmp_path: Path) -> None:
    before = _children()
    results = runner.run(replace(TINY, paths=("limit", "openssh")), log=lambda _: None)
    out = tmp_path / "bench.json"
    report.write_json(results, out)
    doc = json.loads(out.read_text())

    assert set(doc["paths"]) == {"limit", "openssh"}
    assert all(p["available"] for p in doc["paths"].values())
    for path in ("limit", "openssh"):
        _check_path(doc, path)
    # OpenSSH's processes were sampled under the burst; the limit has none of its own.
    for key in ("rss_client", "rss_server"):
        assert doc["figures"][key]["paths"]["openssh"]["value"] > 1
        assert "limit" not in doc["figures"][key]["paths"]
    # Ratios are the figures divided by the limit's, from the same run.
    up = doc["figures"]["upload"]["paths"]
    assert up["openssh"]["vs_limit"] == pytest.approx(up["openssh"]["value"] / up["limit"]["value"])
    assert up["limit"]["vs_limit"] == pytest.approx(1.0)
    # Every target is listed; the bridge ones are not measured here.
    assert [t["target"] for t in doc["targets"]] == [t.label for t in report.TARGETS]
    assert all(t["met"] is None for t in doc["targets"])
    text = report.table(results)
    assert "limit (loopback)" in text and "OpenSSH ssh -R" in text
    assert "aes128-gcm@openssh.com" in text
    # Everything the run started (server, sshd and its sessions, ssh) is gone.
    assert _children() - before == set()


@needs_openssh
def test_bridge_tunnel(tmp_path: Path) -> None:
    pytest.importorskip("bridge.transport.tunnel")
    if not (Path(__file__).resolve().parents[2] / "sidecar" / "__main__.py").exists():
        pytest.skip("the sidecar is not there")
    before = _children()
    cfg = replace(TINY, paths=("limit", "openssh", "tunnel"),
                  workloads=("bulk", "rtt", "connect", "burst"))
    results = runner.run(cfg, log=lambda _: None)
    doc = report.to_json(results)
    assert doc["paths"]["tunnel"]["available"], doc["paths"]["tunnel"]["reason"]
    for key in RATE_AND_TIME:
        entry = doc["figures"][key]["paths"]["tunnel"]
        assert entry["value"] > 0 and entry["vs_openssh"] > 0 and entry["vs_limit"] > 0
    assert doc["figures"]["burst_errors"]["paths"]["tunnel"]["value"] == 0
    for key in ("rss_client", "rss_server"):
        assert doc["figures"][key]["paths"]["tunnel"]["value"] > 1
    assert _children() - before == set()
