"""The features' call sites in the swap's phases, against the fakes: a lock bridge cannot trust
is refused by the lease (nothing changed), the drift watch speaks once the original is at 0,
the link trusts only a pod proven to be the proxy's, and the env files hold the pod's risky
variables back while bridge's own join them."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from bridge.errors import BridgeError
from bridge.model import state
from bridge.progress import Progress
from tests.unit.support import FakeKube, api_error
from tests.unit.swap.test_restore_forged_lock import forged, snapshot

HOST_KEY = "ssh-ed25519 " + "A" * 68


def test_a_lock_bridge_cannot_trust_is_refused_by_the_lease_and_nothing_changes() -> None:
    from bridge.model.outcome import Outcome, final_message
    from bridge.swap.lease import clear_the_way

    kube = FakeKube()
    kube.add("hello", 2, forged(session="X"))  # not a session id bridge writes
    before = snapshot(kube)
    outcome = Outcome()
    with pytest.raises(BridgeError) as e:
        anyio.run(lambda: clear_the_way(kube, kube.deployments["hello"], ttl=60, bound=5,
                                        progress=Progress(stream=io.StringIO()),
                                        outcome=outcome))
    assert kube.deployments == before and "patch_deployment" not in kube.calls
    text = final_message(e.value, outcome)
    assert "cannot trust" in text and text.endswith("nothing was changed")


def test_the_drift_watch_speaks_once_and_only_while_the_original_should_be_at_zero() -> None:
    from bridge.model import controllers
    from bridge.swap.lease import Lease
    from tests.unit.swap.test_session import locked

    kube = FakeKube()
    lk = locked(kube, replicas=2)
    out = io.StringIO()
    lease = Lease(kube, "hello", lk, Progress(stream=out), drift=controllers.DriftWatch())

    async def main() -> None:
        await lease.beat()  # still at 2: not armed, nothing to say
        assert "scaled to" not in out.getvalue()
        await lease.scale_original(0)
        kube.deployments["hello"]["spec"]["replicas"] = 3  # an autoscaler, say
        await lease.beat()
        await lease.beat()
        assert out.getvalue().count("was scaled to 3 during the session") == 1
        await lease.scale_original(2)  # the hand-back: scaling up is ours now

    anyio.run(main)


class ProvingKube(FakeKube):
    """Pods with ReplicaSets: the proxy's (controlled by the Deployment bridge created) and a
    stranger's bare pod carrying the session label and announcing a host key first."""

    def __init__(self) -> None:
        super().__init__()
        self.replicasets = {"proxy-rs": {"metadata": {"name": "proxy-rs", "uid": "rs-uid",
                                                      "ownerReferences": [
                                                          {"kind": "Deployment", "uid": "dep-uid",
                                                           "controller": True}]}}}
        self.logs: dict[str, str] = {}
        self.log_limits: list[int | None] = []

    async def get_replicaset(self, name: str) -> dict[str, Any]:
        if name not in self.replicasets:
            raise api_error(404, f'replicasets.apps "{name}" not found')
        return self.replicasets[name]

    async def pod_log(self, name: str, container: str | None = None, *,
                      tail_lines: int | None = None, limit_bytes: int | None = None) -> str:
        self.log_limits.append(limit_bytes)
        return self.logs.get(name, "")


def _pod(name: str, created: str, spec: dict[str, Any], owner: dict[str, Any] | None) -> dict:  # type: ignore[type-arg]
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created,
                            "labels": {state.SESSION_LABEL: "abcd"}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"metadata": meta, "spec": spec, "status": {"phase": "Running", "containerStatuses": [
        {"name": "web", "state": {"running": {"startedAt": created}}}]}}


def test_the_link_trusts_only_a_pod_proven_to_be_the_proxys() -> None:
    from bridge.swap.link import Linker, LinkSpec

    spec = {"containers": [{"name": "web", "image": "sidecar:1"}]}
    kube = ProvingKube()
    theirs = _pod("impostor", "2026-01-01T00:00:09Z", spec, None)  # newest: would be picked
    ours = _pod("proxy-pod", "2026-01-01T00:00:01Z", spec,
                {"kind": "ReplicaSet", "name": "proxy-rs", "uid": "rs-uid", "controller": True})
    kube.pods = [ours, theirs]
    kube.logs = {"impostor": f"host-key: ssh-ed25519 {'B' * 68}\n",
                 "proxy-pod": f"host-key: {HOST_KEY}\nlater line\n"}
    out = io.StringIO()

    async def ours_still() -> None:
        pass

    linker = Linker(kube, lambda pod: None,
                    LinkSpec("abcd", "web", 8022, None, [], planned_spec=spec, proxy="p"),
                    Progress(stream=out), ours_still, proxy_uid="dep-uid")

    async def main() -> None:
        assert await linker.wait_pod(first=False) == ("proxy-pod", HOST_KEY)
        assert await linker.wait_pod(first=False) == ("proxy-pod", HOST_KEY)

    anyio.run(main)
    assert out.getvalue().count("ignoring pod impostor") == 1  # said once, then ignored
    assert kube.log_limits and all(kube.log_limits)  # the log is read bounded


def test_env_files_hold_back_the_pods_risky_variables_and_add_bridges_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.cleanup import CleanupStack
    from bridge.local import envout

    monkeypatch.chdir(tmp_path)
    pod = {"DB_URL": "postgres://db", "LD_PRELOAD": "/tmp/evil.so", "BASH_ENV": "$(touch x)"}
    own = {"BRIDGE_ROOT": "/tmp/files", "LD_PRELOAD": "/usr/lib/libtorsocks.so"}
    out = io.StringIO()
    progress = Progress(stream=out)
    stack = CleanupStack(progress)
    env_file = envout.write_files(pod, own=own, env_file=None, env_json=str(tmp_path / "e.json"),
                                  attach=True, stem="hello", stack=stack, progress=progress)
    assert env_file == str(tmp_path / ".bridge" / "hello.env")
    lines = Path(env_file).read_text().splitlines()
    assert "DB_URL=postgres://db" in lines and "BRIDGE_ROOT=/tmp/files" in lines
    assert "LD_PRELOAD=/usr/lib/libtorsocks.so" in lines  # bridge's own, after the filter
    assert not any(ln.startswith("BASH_ENV") for ln in lines)
    assert any(ln.startswith("#") and "BASH_ENV" in ln for ln in lines)  # commented out
    assert oct(os.stat(env_file).st_mode & 0o777) == "0o600"
    assert json.loads((tmp_path / "e.json").read_text())["LD_PRELOAD"] == own["LD_PRELOAD"]
    assert out.getvalue().count("held back from the pod's environment") == 1

    child = envout.child_environment(pod, "abcd", allow=("BASH_ENV",), own={"BRIDGE_ROOT": "/r"})
    assert child["BASH_ENV"] == "$(touch x)" and child["BRIDGE_ROOT"] == "/r"
    assert child.get("LD_PRELOAD") != "/tmp/evil.so"
    anyio.run(stack.unwind)
    assert not Path(env_file).exists()  # removed at the end


def test_the_plan_takes_the_options_of_the_features() -> None:
    """--outbound none without --forward: the sidecar opens no connection for the command;
    --forward needs it even then; --mount brings the container's files (and the token)."""
    from bridge.model.target import PortMap
    from bridge.swap.options import Asked, SwapOptions
    from bridge.swap.resolve import Resolved
    from bridge.swap.session import prepare
    from bridge.transport import outbound, tunnel
    from sidecar import protocol
    from tests.unit.model.test_plan import ORIGINAL

    r = Resolved(ORIGINAL, [], "hello", "app", [PortMap(8080, 8080, "http")])
    key = tunnel.new_client_key()

    def planned(asked: Asked, **o: Any) -> dict[str, Any]:
        prep = prepare(r, ORIGINAL, SwapOptions(target="hello", **o), asked, "shop", "s1", key,
                       None, {"requests": {"cpu": "7m"}})
        spec = prep.manifest["spec"]["template"]["spec"]
        app = next(c for c in spec["containers"] if c["name"] == "app")
        return {"env": {e["name"]: e.get("value") for e in app["env"]}, "app": app,
                "spec": spec, "skipped": prep.files_skipped}

    none = Asked(outbound.Mode.NONE, (), None, "", ())
    p = planned(none)
    assert p["env"][protocol.ENV_DIRECT_TCPIP] == "off"
    assert p["app"]["resources"] == {"requests": {"cpu": "7m"}}
    assert p["spec"].get("automountServiceAccountToken") is False
    with_forward = Asked(outbound.Mode.NONE, (outbound.parse_forward("orders:80"),), None, "", ())
    assert planned(with_forward)["env"][protocol.ENV_DIRECT_TCPIP] == "on"
    assert planned(Asked(outbound.Mode.PROXY, (), None, "", ()))["env"][
        protocol.ENV_DIRECT_TCPIP] == "on"
    files = planned(Asked(outbound.Mode.NONE, (), "copy", "", ()), mount_rw=True)
    assert files["spec"].get("automountServiceAccountToken") is not False
    assert any(m["mountPath"] == "/cfg" for m in files["app"].get("volumeMounts") or [])
