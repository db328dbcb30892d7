"""Issue 19 item 5, end to end: text read from the cluster never reaches the terminal raw.

A neighbour who can annotate the Deployment writes a lock whose every value carries terminal
controls: an OSC 52 clipboard write (ESC ] 52 ... BEL), a CSI clear-screen, the 8-bit C1
forms of both, a carriage return and a backspace (to overwrite what was printed), and bidi
overrides (to reorder it). Every command that reads the lock prints it: `bridge status`,
`bridge restore NAME`, `bridge restore --all`, `bridge swap` (which refuses the lock) and
`bridge doctor`. None of those characters may appear in what they write.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bridge.model import controllers, plan, state

from .support import Workload

pytestmark = [pytest.mark.cluster, pytest.mark.e2e,
              pytest.mark.only_on("local", why="the escaping is the laptop's: either API server "
                                               "stores the neighbour's annotation as it was "
                                               "written")]

HOSTILE = ("\x1b]52;c;Y3VybCBldmlsfHNo\x07" "\x1b[2J" "\x9b2J" "\x9d52;c;eA==\x9c" "\r\x08"
           "\u202e" "\u2066" "\u200f" "x")
# C0 controls but newline, DEL, C1 controls, bidi embeddings/overrides/isolates and marks
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def forge_hostile(w: Workload, lock: str) -> None:
    """A lock of hostile values (`lock` "all": every field; "owner": a well-formed lock whose
    free-text owner and ports are hostile), an Argo CD tracking id, and a Deployment labelled
    as bridge's proxy whose annotation names a hostile original."""
    t = state.format_time(state.parse_time("2026-01-01T00:00:00Z"))
    values = {state.SESSION: "s" + HOSTILE, state.OWNER: "mallory" + HOSTILE,
              state.REPLICAS: "2" + HOSTILE, state.PROXY: "hello-bridge-x" + HOSTILE,
              state.STARTED_AT: "2026" + HOSTILE, state.HEARTBEAT: "1" + HOSTILE,
              state.PORTS: "80" + HOSTILE} if lock == "all" else {
        state.SESSION: "x", state.OWNER: "mallory" + HOSTILE, state.REPLICAS: "2",
        state.PROXY: plan.proxy_name("hello", "x"), state.STARTED_AT: t,
        state.PORTS: "80" + HOSTILE}
    values[controllers.ARGO_TRACKING_ID] = "shop" + HOSTILE + ":apps/Deployment:shop/hello"
    w.k("annotate", "deployment/hello", "--overwrite", *[f"{k}={v}" for k, v in values.items()])
    orphan = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
        "name": "hello-bridge-zz", "labels": {
            state.MANAGED_BY_LABEL: state.MANAGED_BY, state.SESSION_LABEL: "zz",
            state.PROXY_FOR_LABEL: "hello"},
        "annotations": {state.PROXY_FOR_LABEL: "hello" + HOSTILE}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"orphan": "zz"}},
                 "template": {"metadata": {"labels": {"orphan": "zz"}}, "spec": {
                     "containers": [{"name": "c", "image": "python:3.11-slim"}]}}}}
    w.kubectl("-n", w.namespace, "apply", "--validate=false", "-f", "-",
              input=json.dumps(orphan))


def assert_clean(what: str, text: str) -> None:
    found = sorted({repr(c) for c in RAW.findall(text)})
    assert not found, f"{what} printed {found} raw:\n{text!r}"


@pytest.mark.parametrize("args", [
    ("status",), ("restore", "hello"), ("restore", "--all"), ("swap", "hello", "--", "true"),
    ("doctor", "hello"),
], ids=lambda a: "-".join(a[:2]))
@pytest.mark.parametrize("lock", ["all", "owner"])
def test_cluster_text_is_escaped_in_every_command(make_workload: Any, args: tuple[str, ...],
                                                  lock: str) -> None:
    w = make_workload()
    forge_hostile(w, lock)
    try:
        _, b = w.run_bridge(*args, env={"BRIDGE_HEARTBEAT_TTL": "1"})
        assert b.stdout or b.stderr
        assert_clean(f"bridge {' '.join(args)} (stderr)", b.stderr)
        assert_clean(f"bridge {' '.join(args)} (stdout)", b.stdout)
    finally:
        w.k("annotate", "deployment/hello", *[k + "-" for k in state.KEYS],
            controllers.ARGO_TRACKING_ID + "-")
        w.k("delete", "deployment", "hello-bridge-zz", "--ignore-not-found")
