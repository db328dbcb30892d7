"""The session (bridge/swap/session.py) without a cluster: the plan phase takes the request's
features, the first BridgeError is found in nested task groups, a bad request stops before the
cluster is contacted."""

from __future__ import annotations

from typing import Any

from bridge.errors import BridgeError
from bridge.swap.session import first_bridge_error
from tests.unit.support import Rendezvous


def test_first_bridge_error_in_nested_groups() -> None:
    inner = BridgeError("the one")
    eg = BaseExceptionGroup("outer", [ValueError("x"), BaseExceptionGroup("inner", [inner])])
    assert first_bridge_error(eg) is inner
    assert first_bridge_error(BaseExceptionGroup("g", [ValueError("x")])) is None


def test_the_plan_takes_the_options_of_the_features() -> None:
    """--outbound none without --forward: the sidecar opens no connection for the command;
    --forward needs it even then; --mount brings the container's files (and the token)."""
    from bridge.model.target import PortMap
    from bridge.swap.options import SwapOptions
    from bridge.swap.request import SwapRequest
    from bridge.swap.resolve import Resolved
    from bridge.swap.session import prepare
    from bridge.transport import outbound, tunnel
    from sidecar import protocol
    from tests.unit.support import ORIGINAL

    r = Resolved(ORIGINAL, [], "hello", "app", [PortMap(8080, 8080, "http")])
    key = tunnel.new_client_key()

    def asked(mode: outbound.Mode, forwards: tuple[outbound.Forward, ...] = (),
              files: str | None = None, **o: Any) -> SwapRequest:
        return SwapRequest(SwapOptions(target="hello", **o), (), mode, forwards, files, "", ())

    def planned(req: SwapRequest) -> dict[str, Any]:
        prep = prepare(r, ORIGINAL, req, "shop", "s1", key, None, {"requests": {"cpu": "7m"}})
        spec = prep.manifest["spec"]["template"]["spec"]
        app = next(c for c in spec["containers"] if c["name"] == "app")
        return {"env": {e["name"]: e.get("value") for e in app["env"]}, "app": app,
                "spec": spec, "skipped": prep.files_skipped}

    none = asked(outbound.Mode.NONE)
    p = planned(none)
    assert p["env"][protocol.ENV_DIRECT_TCPIP] == "off"
    assert p["app"]["resources"] == {"requests": {"cpu": "7m"}}
    assert p["spec"].get("automountServiceAccountToken") is False
    with_forward = asked(outbound.Mode.NONE, (outbound.parse_forward("orders:80"),))
    assert planned(with_forward)["env"][protocol.ENV_DIRECT_TCPIP] == "on"
    assert planned(asked(outbound.Mode.PROXY))["env"][
        protocol.ENV_DIRECT_TCPIP] == "on"
    files = planned(asked(outbound.Mode.NONE, files="copy", mount_rw=True))
    assert files["spec"].get("automountServiceAccountToken") is not False
    assert any(m["mountPath"] == "/cfg" for m in files["app"].get("volumeMounts") or [])


def test_the_lock_is_written_beside_the_reads_of_the_originals_pods(
        tmp_path: Any, monkeypatch: Any) -> None:
    """One round trip for the lock's write and what admission added to the original's pods
    (its ReplicaSets, its pods): each waits (bounded) until all three are in flight, so a
    serial order fails here instead of only being slower."""
    import io

    import anyio

    from bridge.model.target import PortMap
    from bridge.progress import Progress
    from bridge.swap.lease import now
    from bridge.swap.options import SwapOptions
    from bridge.swap.request import SwapRequest
    from bridge.swap.resolve import Resolved
    from bridge.swap.session import Session, prepare
    from bridge.transport import outbound, tunnel
    from tests.unit.support import ORIGINAL, FakeKube

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the session's record on this machine
    meet = Rendezvous(3)

    class AtOnce(FakeKube):
        async def patch_deployment(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
            await meet.arrive("lock")
            return await super().patch_deployment(name, patch)

        async def list_replicasets(self, label_selector: str) -> list[dict[str, Any]]:
            await meet.arrive("replicasets")
            return await super().list_replicasets(label_selector)

        async def list_pods(self, selector: str | None = None) -> list[dict[str, Any]]:
            await meet.arrive("pods")
            return await super().list_pods(selector)

    kube = AtOnce()
    kube.deployments["hello"] = dict(ORIGINAL)
    deployment = kube.deployments["hello"]
    req = SwapRequest(SwapOptions(target="hello"), (), outbound.Mode.NONE, (), None, "", ())
    session = Session(req, Progress(stream=io.StringIO()))
    r = Resolved(deployment, [], "hello", "app", [PortMap(8080, 8080, "http")])
    prep = prepare(r, deployment, req, "shop", "s1", tunnel.new_client_key(), now())

    async def main() -> Any:
        return await session._lease_and_admitted(kube, r, prep, deployment, [])  # type: ignore[arg-type]

    lease, (admitted, why) = anyio.run(main)
    assert sorted(meet.entered) == ["lock", "pods", "replicasets"]
    assert lease.lock.session == "s1"
    assert "s1" in str(kube.deployments["hello"]["metadata"]["annotations"])
    assert why  # no pods listed: nothing admitted, and said why
