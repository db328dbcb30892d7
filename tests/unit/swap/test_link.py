"""The link's choice of pod (issue 19): on a reconnect it keeps to the pod it was connected to
while that pod lives, never "the newest" proven pod; the admission note is said with a
refusal."""

from __future__ import annotations

import io
from typing import Any

import anyio
import pytest

from bridge.errors import BridgeError
from bridge.model import state, trust
from bridge.progress import Progress
from bridge.swap.link import Linker, LinkSpec, pod_problem
from tests.unit.support import (
    FakeKube,
    Rendezvous,
    api_error,
    make_linker,
    sidecar_status,
)

HOST_KEY = "ssh-ed25519 " + "A" * 68
SPEC = {"containers": [{"name": "web", "image": "sidecar:1"}]}
RS_REF = {"kind": "ReplicaSet", "name": "proxy-rs", "uid": "rs-uid", "controller": True}


class Kube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.rs = {"metadata": {"name": "proxy-rs", "uid": "rs-uid", "ownerReferences": [
            {"kind": "Deployment", "uid": "dep-uid", "controller": True}]}}

    async def get_replicaset(self, name: str) -> dict[str, Any]:
        if name != "proxy-rs":
            raise api_error(404, "not found")
        return self.rs

    async def pod_log(self, name: str, container: str | None = None, *,
                      tail_lines: int | None = None, limit_bytes: int | None = None) -> str:
        return f"host-key: {HOST_KEY}\n"


def pod(name: str, uid: str, created: str, spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "creationTimestamp": created,
                         "labels": {state.SESSION_LABEL: "abcd"}, "ownerReferences": [RS_REF]},
            "spec": spec, "status": {"phase": "Running", "containerStatuses": [
                {"name": "web", "state": {"running": {"startedAt": created}}}]}}


def linker(kube: Kube, out: io.StringIO, **kw: Any) -> Linker:
    async def ours() -> None:
        pass

    return Linker(kube, lambda p: None, LinkSpec("abcd", "web", 8022, None, [],
                                                 planned_spec=SPEC, proxy="p"),
                  Progress(stream=out), ours, proxy_uid="dep-uid", **kw)


def test_a_reconnect_keeps_to_the_pod_in_use_while_it_lives() -> None:
    kube = Kube()
    first = pod("proxy-a", "uid-a", "2026-01-01T00:00:01Z")
    newer = pod("proxy-b", "uid-b", "2026-01-01T00:00:09Z")  # proven too, and newer
    kube.pods = [first]
    link = linker(kube, io.StringIO())

    async def main() -> None:
        assert (await link.wait_pod(first=True))[0] == "proxy-a"
        link.pod_uid = link._chosen_uid  # what connect() records once the tunnel is up
        kube.pods = [first, newer]
        assert (await link.wait_pod(first=False))[0] == "proxy-a"
        kube.pods = [newer]  # the pod in use is gone: the next proven one
        assert (await link.wait_pod(first=False))[0] == "proxy-b"

    anyio.run(main)


def test_a_refusal_says_why_admissions_additions_were_not_accepted() -> None:
    kube = Kube()
    meshed = {"containers": SPEC["containers"] + [{"name": "mesh-proxy", "image": "m:1"}]}
    kube.pods = [pod("proxy-a", "uid-a", "2026-01-01T00:00:01Z", meshed),
                 pod("proxy-b", "uid-b", "2026-01-01T00:00:02Z")]
    out = io.StringIO()
    link = linker(kube, out, admitted=trust.NOTHING_ADMITTED,
                  admitted_note="the pods of deployment/hello differ in what admission added")

    async def main() -> None:
        assert (await link.wait_pod(first=False))[0] == "proxy-b"

    anyio.run(main)
    assert "ignoring pod proxy-a" in out.getvalue()
    assert "mesh-proxy" in out.getvalue() and "differ in what admission added" in out.getvalue()


def test_the_start_ends_at_once_when_the_proxys_only_pod_is_refused() -> None:
    """Issue 19: a mesh's additions the original's pods do not carry made bridge wait for its
    own pod until the timeout; the pod cannot change, so the start fails at once, saying why."""
    import pytest

    from bridge.errors import BridgeError

    kube = Kube()
    meshed = {"containers": SPEC["containers"] + [{"name": "mesh-proxy", "image": "m:1"}]}
    kube.pods = [pod("proxy-a", "uid-a", "2026-01-01T00:00:01Z", meshed)]
    link = linker(kube, io.StringIO(),
                  admitted_note="deployment/hello has no running pod to compare with")

    async def main() -> None:
        with anyio.fail_after(5):
            await link.wait_pod(first=True)

    with pytest.raises(BridgeError) as e:
        anyio.run(main)
    assert "mesh-proxy" in str(e.value) and "no running pod" in str(e.value)
    assert "\n" not in str(e.value)


# -- moved here from the old test_session.py

def test_a_sidecar_that_crashed_once_fails_the_start_but_not_a_reconnect() -> None:
    crashed_then_running = sidecar_status(
        {"running": {}}, {"terminated": {"exitCode": 137, "reason": "Error"}})
    assert pod_problem(crashed_then_running, "web", past=True) == \
        "the sidecar exited with code 137 (Error)"
    assert pod_problem(crashed_then_running, "web", past=False) == ""
    dead_now = sidecar_status({"terminated": {"exitCode": 1, "reason": "Error"}})
    assert pod_problem(dead_now, "web", past=False) == "the sidecar exited with code 1 (Error)"
    backoff = sidecar_status({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                              {"terminated": {"exitCode": 137}})
    assert pod_problem(backoff, "web", past=False) == "CrashLoopBackOff: back-off"
    assert pod_problem(sidecar_status({"running": {}}), "web", past=True) == ""
    assert pod_problem(sidecar_status({"running": {}}, {"terminated": {"exitCode": 2}}),
                       "other", past=True) == ""


def test_a_reconnect_waits_for_the_sidecar_to_release_the_ports() -> None:
    """The real sidecar still holds the port for a connection the agent gave up on; the new
    connection's forward is retried until the old one is gone, then traffic flows through it.
    Without patience the refusal is immediate."""
    import asyncio

    from bridge.model.target import PortMap
    from bridge.swap.link import Link
    from bridge.transport.tunnel import ForwardRefused
    from tests.unit.support import free_port, sidecar

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"laptop:" + await reader.readline())
        await writer.drain()
        writer.close()

    async def main() -> None:
        local = free_port()
        server = await asyncio.start_server(answer, "127.0.0.1", local)
        out = io.StringIO()
        async with sidecar() as side:
            old = await side.connect()
            await old.forward(side.forward_port, "127.0.0.1", local)
            new = await side.connect()
            try:
                linker = make_linker(FakeKube(), [PortMap(side.forward_port, local)],
                                     Progress(stream=out))
                link = Link("pod", forwarder=None, tunnel=new)
                with pytest.raises(ForwardRefused):
                    await linker.forward(link, patience=0.0)
                task = asyncio.create_task(linker.forward(link, patience=60.0))
                async with asyncio.timeout(30):
                    while "to release port" not in out.getvalue():  # noqa: ASYNC110 - polls a buffer
                        await asyncio.sleep(0.05)
                assert not task.done()
                await old.close()  # the sidecar lets the port go with the old connection
                async with asyncio.timeout(30):
                    await task
                reader, writer = await asyncio.open_connection("127.0.0.1", side.forward_port)
                writer.write(b"hello\n")
                async with asyncio.timeout(30):
                    assert await reader.read() == b"laptop:hello\n"
                writer.close()
            finally:
                await new.close()
                await old.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_the_reconnect_policy_is_bounded_when_asked_and_ends_when_the_lease_is_gone() -> None:
    """One policy for both users: the hand-over gives it a bound; the watchdog none, and then
    only a lost lease (or proxy) ends it."""
    from bridge.swap.lease import NotOurs
    from bridge.swap.link import Link, Linker, LinkSpec

    closed: list[str] = []

    class Old:
        async def close(self) -> None:
            closed.append("old")

    kube = FakeKube()  # no proxy pod ever comes back

    async def fine() -> None:
        pass

    async def gone() -> None:
        raise NotOurs("proxy deployment/p was deleted while swapped")

    def linker(still_ours):  # type: ignore[no-untyped-def]
        return Linker(kube, lambda pod: None, LinkSpec("abcd", "web", 8022, None, []),
                      Progress(stream=io.StringIO()), still_ours)

    old = Link("pod", Old(), Old())
    bounded = linker(fine)
    with pytest.raises(BridgeError, match="reconnecting to the proxy pod"):
        anyio.run(lambda: bounded.reconnect(old, forward=False, within=0.5))
    assert closed == ["old", "old"] and bounded.current is None and bounded.reconnected

    unbounded = linker(gone)

    async def watchdog() -> None:
        with anyio.fail_after(30):  # bounds a hang; NotOurs comes at the first check (2 s)
            await unbounded.reconnect(Link("pod", Old(), Old()), forward=True, within=None)

    with pytest.raises(NotOurs):
        anyio.run(watchdog)


HOST_KEY = "ssh-ed25519 " + "A" * 68


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


def test_the_host_keys_log_is_read_beside_the_proof_of_the_pod() -> None:
    """One round trip for the pod's proof (its ReplicaSet) and its sidecar's log: each waits
    (bounded) until the other is in flight too, so a serial pair fails here; the host key is
    still taken from the proven pod only (test_the_link_trusts_only_a_pod_proven...)."""
    from bridge.swap.link import Linker, LinkSpec

    spec = {"containers": [{"name": "web", "image": "sidecar:1"}]}
    meet = Rendezvous(2)

    class AtOnce(ProvingKube):
        async def get_replicaset(self, name: str) -> dict[str, Any]:
            await meet.arrive("replicaset")
            return await super().get_replicaset(name)

        async def pod_log(self, name: str, container: str | None = None, *,
                          tail_lines: int | None = None, limit_bytes: int | None = None) -> str:
            await meet.arrive("log")
            return await super().pod_log(name, container, tail_lines=tail_lines,
                                         limit_bytes=limit_bytes)

    kube = AtOnce()
    kube.pods = [_pod("proxy-pod", "2026-01-01T00:00:01Z", spec,
                      {"kind": "ReplicaSet", "name": "proxy-rs", "uid": "rs-uid",
                       "controller": True})]
    kube.logs = {"proxy-pod": f"host-key: {HOST_KEY}\n"}

    async def ours_still() -> None:
        pass

    linker = Linker(kube, lambda pod: None,
                    LinkSpec("abcd", "web", 8022, None, [], planned_spec=spec, proxy="p"),
                    Progress(stream=io.StringIO()), ours_still, proxy_uid="dep-uid")

    async def main() -> tuple[str, str]:
        return await linker.wait_pod(first=True)

    assert anyio.run(main) == ("proxy-pod", HOST_KEY)
    assert sorted(meet.entered) == ["log", "replicaset"]  # and no second read of the log


class Sidecar:
    """A tunnel's `version` and `env` that each wait (bounded) until both are asked: asked one
    after the other, they fail."""

    def __init__(self, version_error: BridgeError | None = None) -> None:
        self.asked: list[str] = []
        self.both = anyio.Event()
        self.version_error = version_error

    async def _both(self, what: str) -> None:
        self.asked.append(what)
        if len(self.asked) == 2:
            self.both.set()
        with anyio.fail_after(5):
            await self.both.wait()

    async def version(self) -> dict[str, Any]:
        await self._both("version")
        if self.version_error is not None:
            raise self.version_error
        return {"protocol": 1}

    async def env(self) -> dict[str, str]:
        await self._both("env")
        return {"HOME": "/root"}


def test_the_first_link_asks_the_version_and_the_environment_at_once() -> None:
    from bridge.swap.link import first_words

    tun = Sidecar()
    assert anyio.run(first_words, tun, True) == ({"protocol": 1}, {"HOME": "/root"})
    assert sorted(tun.asked) == ["env", "version"]
    other = Sidecar(BridgeError("the sidecar speaks protocol 99"))
    with pytest.raises(BridgeError, match="protocol 99"):  # never its environment
        anyio.run(first_words, other, True)


def test_a_reconnect_asks_the_version_only() -> None:
    from bridge.swap.link import first_words

    class Alone(Sidecar):
        async def _both(self, what: str) -> None:
            self.asked.append(what)

    tun = Alone()
    assert anyio.run(first_words, tun, False) == ({"protocol": 1}, None)
    assert tun.asked == ["version"]
