"""The node (kubelet, network, service proxy, dial, logs) driven through the object store
directly, without the API server: real processes, real network namespaces, real traffic.

Needs root (network namespaces). Every test starts its own node instance and stops it, and
checks nothing of it is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.clusterchecks.support import HOSTNAME_SERVER
from tests.equipment.localcluster.config import ClusterConfig
from tests.equipment.localcluster.errors import ApiError
from tests.equipment.localcluster.network import NETNS_DIR, claim_index, release_index
from tests.equipment.localcluster.node import Node
from tests.equipment.localcluster.store import Store

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.timeout(120),
]

Obj = dict[str, Any]
WAIT = 20.0

# Answers GET with its pod name (HOSTNAME) on $PORT (default 8080); exits 0 on SIGTERM.
SERVER = ("import signal, sys\n"
          "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n" + HOSTNAME_SERVER)


# Prints what GET argv[1] answered.
CLIENT = ("import urllib.request,sys;"
          "print('got', urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 100))


def leftovers(prefix: str) -> list[str]:
    names = [p.name for p in NETNS_DIR.iterdir()] if NETNS_DIR.is_dir() else []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = [f"netns {n}" for n in names if n.startswith(prefix + "-")]
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
              if line.split(":")[1].strip().startswith((prefix + "br", prefix + "v"))]
    return found


@contextlib.asynccontextmanager
async def running_node(**settings: Any) -> AsyncIterator[tuple[Store, Node]]:
    index, fd = claim_index()
    config = ClusterConfig(index=index, **settings)
    store = Store()
    store.create("services", {
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"clusterIP": str(config.kubernetes_service_ip),
                 "ports": [{"name": "https", "port": 443}]},
    })
    node = Node(store, config)
    await node.start()
    try:
        yield store, node
    finally:
        await node.stop()
        release_index(fd)
        assert leftovers(config.prefix) == []
        assert not config.state_dir.exists()


def pod(name: str, *containers: Obj, **spec: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"restartPolicy": "Always", "terminationGracePeriodSeconds": 5,
                 "nodeName": "bridge-node", "containers": list(containers), **spec},
        "status": {"phase": "Pending"},
    }


def container(name: str = "main", command: list[str] | None = None, **extra: Any) -> Obj:
    c: Obj = {"name": name, "image": "example.org/app:1", **extra}
    if command is not None:
        c["command"] = command
    return c


def server(name: str = "main", **extra: Any) -> Obj:
    return container(name, ["python3", "-c", SERVER], **extra)


async def wait_pod(store: Store, name: str, predicate: Callable[[Obj], bool],
                   what: str, within: float = WAIT) -> Obj:
    deadline = time.monotonic() + within
    current = None
    while time.monotonic() < deadline:
        current = store.try_get("pods", "default", name)
        if current is not None and predicate(current):
            return current
        await asyncio.sleep(0.02)
    raise AssertionError(f"pod {name} never {what}; last seen: {json.dumps(current, indent=1)}")


async def until(done: Callable[[], bool], what: str) -> None:
    """Poll `done` until it is true; fail with `what` after WAIT (a hang guard)."""
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def condition(p: Obj, kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True"
               for c in p.get("status", {}).get("conditions", []))


def cstatus(p: Obj, name: str = "main") -> Obj:
    for c in p.get("status", {}).get("containerStatuses", []):
        if c["name"] == name:
            return c
    return {}


async def ready(store: Store, name: str) -> Obj:
    return await wait_pod(store, name, lambda p: condition(p, "Ready"), "became Ready")


async def http_get(url: str, within: float = 5.0) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=within) as response:
            return response.read().decode()
    return await asyncio.to_thread(get)


async def http_get_retry(url: str) -> str:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await http_get(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def read_logs(node: Node, name: str, container_name: str | None = None,
                    **kw: Any) -> str:
    return b"".join([c async for c in node.logs("default", name, container_name, **kw)]).decode()


async def wait_log(node: Node, name: str, text: str, container_name: str | None = None) -> str:
    deadline = time.monotonic() + WAIT
    out = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiError):
            out = await read_logs(node, name, container_name)
            if text in out:
                return out
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never in the log of {name}: {out!r}")


def endpoints(name: str, ready_ips: list[str], port: int = 8080,
              not_ready: list[str] | None = None) -> Obj:
    subset: Obj = {"addresses": [{"ip": ip} for ip in ready_ips],
                   "ports": [{"name": "http", "port": port}]}
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
    return {"metadata": {"name": name, "namespace": "default"}, "subsets": [subset]}


# -- pods ----------------------------------------------------------------------------------


def test_pods_get_own_ips_and_can_listen_on_the_same_port() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            store.create("pods", pod("one", server()))
            store.create("pods", pod("two", server()))
            one, two = await ready(store, "one"), await ready(store, "two")
            ip1, ip2 = one["status"]["podIP"], two["status"]["podIP"]
            assert ip1 != ip2
            assert one["status"]["phase"] == "Running"
            assert one["status"]["hostIP"] == str(node.config.gateway)
            assert await http_get_retry(f"http://{ip1}:8080/") == "one"
            assert await http_get_retry(f"http://{ip2}:8080/") == "two"
            # pod -> pod over the bridge
            store.create("pods", pod("client", container(
                command=["python3", "-c", CLIENT, f"http://{ip2}:8080/"]), restartPolicy="Never"))
            await wait_pod(store, "client", lambda p: p["status"]["phase"] == "Succeeded",
                           "succeeded")
            assert "got two" in await read_logs(node, "client")
    run(scenario)


def test_process_gets_exactly_the_kubernetes_environment() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            store.create("configmaps", {"metadata": {"name": "cfg", "namespace": "default"},
                                        "data": {"MODE": "fast"}})
            store.create("services", {"metadata": {"name": "hello", "namespace": "default"},
                                      "spec": {"clusterIP": f"10.96.{node.config.index}.20",
                                               "ports": [{"name": "http", "port": 8080}]}})
            dump = "import json,os,sys; print(json.dumps({'env': dict(os.environ), 'argv': sys.argv[1:], 'cwd': os.getcwd()}))"  # noqa: E501
            c = container(command=["python3", "-c", dump], args=["$(MODE)", "$$(MODE)", "$(NOPE)"],
                          envFrom=[{"configMapRef": {"name": "cfg"}}],
                          env=[{"name": "IP", "valueFrom": {"fieldRef":
                                                            {"fieldPath": "status.podIP"}}}])
            store.create("pods", pod("envpod", c, restartPolicy="Never"))
            done = await wait_pod(store, "envpod", lambda p: p["status"]["phase"] == "Succeeded",
                                  "succeeded")
            out = json.loads(await read_logs(node, "envpod"))
            env = out["env"]
            assert env["MODE"] == "fast"
            assert env["IP"] == done["status"]["podIP"]
            assert env["HOSTNAME"] == "envpod"
            assert env["HELLO_SERVICE_HOST"] == f"10.96.{node.config.index}.20"
            assert env["HELLO_PORT_8080_TCP_ADDR"] == f"10.96.{node.config.index}.20"
            assert env["KUBERNETES_SERVICE_HOST"] == str(node.config.kubernetes_service_ip)
            assert env["KUBERNETES_SERVICE_PORT"] == "443"
            assert out["argv"] == ["fast", "$(MODE)", "$(NOPE)"]
            # Nothing of the host's environment leaks in (python itself adds nothing).
            host_only = {"HOME", "PWD", "USER", "SHELL", "PYTEST_CURRENT_TEST", "VIRTUAL_ENV"}
            assert host_only.isdisjoint(env), host_only & set(env)
            assert cstatus(done)["state"]["terminated"]["exitCode"] == 0
            assert cstatus(done)["state"]["terminated"]["reason"] == "Completed"
    run(scenario)


def test_missing_config_key_waits_with_create_container_config_error() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            c = server(env=[{"name": "X", "valueFrom": {"configMapKeyRef":
                                                        {"name": "late", "key": "k"}}}])
            store.create("pods", pod("cfg", c))
            waiting = await wait_pod(
                store, "cfg",
                lambda p: cstatus(p).get("state", {}).get("waiting", {}).get("reason")
                == "CreateContainerConfigError",
                "waited with CreateContainerConfigError")
            assert cstatus(waiting)["state"]["waiting"]["message"] == 'configmap "late" not found'
            assert waiting["status"]["phase"] == "Pending"
            store.create("configmaps", {"metadata": {"name": "late", "namespace": "default"},
                                        "data": {"k": "v"}})
            await ready(store, "cfg")
    run(scenario)


def test_container_without_command_fails_visibly_and_backs_off() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            store.create("pods", pod("nocmd", container()))
            p = await wait_pod(store, "nocmd", lambda p: cstatus(p).get("restartCount", 0) >= 1,
                               "restarted")
            last = cstatus(p)["lastState"]["terminated"]
            assert last["reason"] == "StartError" and last["exitCode"] == 128
            assert "has no command" in last["message"]
            assert "has no command" in await read_logs(node, "nocmd")
            assert not cstatus(p)["ready"]
    run(scenario)


def test_restart_policy_always_restarts_with_backoff_and_keeps_previous_log() -> None:
    # Attempt N prints "attempt N"; attempt 2 lives for a while, the others exit at once.
    script = ('n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; '
              'echo "attempt $n"; echo oops >&2; [ "$n" = 2 ] && sleep 5; exit 3')

    def state(p: Obj) -> str:
        return next(iter(cstatus(p).get("state") or {"": 0}))

    async def scenario() -> None:
        async with running_node() as (store, node):
            store.create("pods", pod("crash", container(command=["sh", "-c", script])))
            # Backing off after attempt 1: current and previous are both the one that ended.
            p = await wait_pod(store, "crash", lambda p: state(p) == "waiting"
                               and cstatus(p).get("lastState"), "backing off")
            st = cstatus(p)
            assert st["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            assert st["lastState"]["terminated"]["exitCode"] == 3
            assert st["lastState"]["terminated"]["reason"] == "Error"
            assert p["status"]["phase"] == "Running"
            assert await read_logs(node, "crash") == "attempt 1\noops\n"
            assert await read_logs(node, "crash", previous=True) == "attempt 1\noops\n"
            # Attempt 2 running: previous is attempt 1.
            p = await wait_pod(store, "crash", lambda p: state(p) == "running"
                               and cstatus(p)["restartCount"] == 1, "running attempt 2")
            assert await read_logs(node, "crash", previous=True) == "attempt 1\noops\n"
            await wait_log(node, "crash", "attempt 2\n")
            p = await wait_pod(store, "crash", lambda p: cstatus(p)["restartCount"] >= 2,
                               "restarted twice")
            with pytest.raises(ApiError, match="container nope is not valid for pod crash"):
                node.logs("default", "crash", "nope")
    run(scenario)


def test_restart_policy_never_and_on_failure() -> None:
    async def scenario() -> None:
        async with running_node() as (store, _node):
            store.create("pods", pod("never", container(command=["sh", "-c", "exit 4"]),
                                     restartPolicy="Never"))
            store.create("pods", pod("onfail", container(command=["true"]),
                                     restartPolicy="OnFailure"))
            failed = await wait_pod(store, "never", lambda p: p["status"]["phase"] == "Failed",
                                    "failed")
            assert cstatus(failed)["state"]["terminated"]["exitCode"] == 4
            assert cstatus(failed)["restartCount"] == 0
            await wait_pod(store, "onfail", lambda p: p["status"]["phase"] == "Succeeded",
                           "succeeded")
    run(scenario)


def test_init_containers_run_first_in_order() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            inits = [container("first", ["sh", "-c", "echo one > order"]),
                     container("second", ["sh", "-c", "echo two >> order"])]
            store.create("pods", pod("init", container(command=["sh", "-c", "cat order"]),
                                     initContainers=inits, restartPolicy="Never"))
            done = await wait_pod(store, "init", lambda p: p["status"]["phase"] == "Succeeded",
                                  "succeeded")
            assert await read_logs(node, "init") == "one\ntwo\n"
            assert [c["state"]["terminated"]["exitCode"]
                    for c in done["status"]["initContainerStatuses"]] == [0, 0]
            assert condition(done, "Initialized")
    run(scenario)


def test_pod_sysctl_applies_inside_the_pod_netns_only() -> None:
    host_sysctl = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    host_value = host_sysctl.read_text()

    async def scenario() -> None:
        async with running_node() as (store, node):
            read = ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
            store.create("pods", pod(
                "sysctl", container(command=read), restartPolicy="Never",
                securityContext={"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start",
                                              "value": "80"}]}))
            await wait_pod(store, "sysctl", lambda p: p["status"]["phase"] == "Succeeded",
                           "succeeded")
            assert (await read_logs(node, "sysctl")).strip() == "80"
    run(scenario)
    assert host_sysctl.read_text() == host_value


def test_image_commands_map_images_to_programs() -> None:
    mapping = {"example.org/echo:1": ["sh", "-c", 'echo "mapped $*"', "sh"]}

    async def scenario() -> None:
        async with running_node(image_commands=mapping) as (store, node):
            c = {"name": "main", "image": "example.org/echo:1", "args": ["a", "$(WHO)"],
                 "env": [{"name": "WHO", "value": "b"}]}
            store.create("pods", pod("mapped", c, restartPolicy="Never"))
            await wait_pod(store, "mapped", lambda p: p["status"]["phase"] == "Succeeded",
                           "succeeded")
            assert await read_logs(node, "mapped") == "mapped a b\n"
    run(scenario)


def test_sidecar_image_runs_the_checkouts_sidecar() -> None:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()

    async def scenario() -> None:
        async with running_node() as (store, node):
            c = {"name": "proxy", "image": node.config.sidecar_image,
                 "command": ["this-is-ignored"],
                 "env": [{"name": "BRIDGE_AUTHORIZED_KEY", "value": key},
                         {"name": "BRIDGE_PORTS", "value": "8080"}]}
            store.create("pods", pod("side", c))
            await wait_log(node, "side", "host-key: ssh-ed25519 ", "proxy")
    run(scenario)


# -- probes --------------------------------------------------------------------------------


def test_readiness_http_probe_on_named_port_gates_ready() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            # Serves only after the test creates the file `go` in the pod's working directory.
            late = ("import os,time\nwhile not os.path.exists('go'): time.sleep(0.05)\n" + SERVER)
            c = container(command=["python3", "-c", late],
                          ports=[{"name": "web", "containerPort": 8080}],
                          readinessProbe={"httpGet": {"path": "/", "port": "web"},
                                          "periodSeconds": 1})
            store.create("pods", pod("rp", c))
            running = await wait_pod(store, "rp",
                                     lambda p: "running" in cstatus(p).get("state", {}),
                                     "running")
            await asyncio.sleep(1.5)  # at least one failed probe (nothing listens yet)
            p = store.get("pods", "default", "rp")
            assert not cstatus(p)["ready"] and not condition(p, "Ready")
            worker = node.kubelet.worker("default", "rp")
            assert worker is not None and running
            (worker.work_dir / "go").touch()
            p = await ready(store, "rp")
            assert cstatus(p)["ready"]
    run(scenario)


def test_liveness_failure_restarts_the_container() -> None:
    async def scenario() -> None:
        async with running_node() as (store, _node):
            c = server(livenessProbe={"tcpSocket": {"port": 9999}, "periodSeconds": 1,
                                      "failureThreshold": 2})
            store.create("pods", pod("live", c))
            p = await wait_pod(store, "live", lambda p: cstatus(p).get("restartCount", 0) >= 1,
                               "restarted by its liveness probe")
            last = cstatus(p)["lastState"]["terminated"]
            assert "Liveness probe failed" in last.get("message", "")
    run(scenario)


def test_startup_probe_gates_readiness_and_liveness() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            c = server(startupProbe={"exec": {"command": ["test", "-f", "started"]},
                                     "periodSeconds": 1, "failureThreshold": 60},
                       livenessProbe={"tcpSocket": {"port": 9999}, "periodSeconds": 1,
                                      "failureThreshold": 1})
            store.create("pods", pod("sp", c))
            history: list[Obj] = []

            async def record() -> None:
                async for event in store.watch("pods", "default"):
                    if event.object["metadata"]["name"] == "sp":
                        history.append(cstatus(event.object))

            recorder = asyncio.create_task(record())
            await wait_pod(store, "sp", lambda p: "running" in cstatus(p).get("state", {}),
                           "running")
            await asyncio.sleep(2.5)  # the failing liveness probe must not run yet
            p = store.get("pods", "default", "sp")
            assert cstatus(p)["restartCount"] == 0
            assert not cstatus(p)["started"] and not cstatus(p)["ready"]
            worker = node.kubelet.worker("default", "sp")
            assert worker is not None
            (worker.work_dir / "started").touch()
            # Once started, the (always failing) liveness probe restarts it.
            await wait_pod(store, "sp", lambda p: cstatus(p).get("restartCount", 0) >= 1,
                           "restarted after startup")
            recorder.cancel()
            assert any(h.get("started") for h in history)
            assert not any(h.get("ready") and not h.get("started") for h in history)
    run(scenario)


# -- deletion ------------------------------------------------------------------------------


def test_graceful_deletion_leaves_endpoints_before_sigterm(tmp_path: Path) -> None:
    marker = tmp_path / "term"

    async def scenario() -> None:
        async with running_node() as (store, _node):
            trap = (f"import signal,sys,time\n"
                    f"def h(*a):\n open({str(marker)!r},'w').write('TERM'); sys.exit(0)\n"
                    "signal.signal(signal.SIGTERM, h)\nprint('up', flush=True)\n"
                    "while True: time.sleep(1)\n")
            store.create("pods", pod("graceful", container(command=["python3", "-c", trap])))
            p = await ready(store, "graceful")
            store.create("endpoints", endpoints("svc", [p["status"]["podIP"]]))
            p["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
            p["metadata"]["deletionGracePeriodSeconds"] = 10
            store.replace("pods", p)
            await asyncio.sleep(0.5)
            assert not marker.exists(), "signalled while still listed in Endpoints"
            ep = store.get("endpoints", "default", "svc")
            ep["subsets"] = []
            store.replace("endpoints", ep)
            await until(lambda: store.try_get("pods", "default", "graceful") is None,
                        "pod never removed")
            assert marker.read_text() == "TERM"
    run(scenario)


def test_lifecycle_hooks_post_start_failure_and_pre_stop_before_sigterm(tmp_path: Path) -> None:
    order = tmp_path / "order"

    async def scenario() -> None:
        async with running_node() as (store, _node):
            failing = server(lifecycle={"postStart": {"exec": {"command": ["false"]}}})
            store.create("pods", pod("poststart", failing))
            p = await wait_pod(store, "poststart",
                               lambda p: cstatus(p).get("restartCount", 0) >= 1,
                               "restarted after its postStart hook failed")
            assert "PostStartHook failed" in cstatus(p)["lastState"]["terminated"]["message"]
            assert not condition(p, "Ready")

            trap = (f"import signal,sys,time\n"
                    f"def h(*a):\n open({str(order)!r},'a').write('term\\n'); sys.exit(0)\n"
                    "signal.signal(signal.SIGTERM, h)\n"
                    + HOSTNAME_SERVER)  # h stays the handler
            hooked = container(command=["python3", "-c", trap], lifecycle={
                "preStop": {"exec": {"command": ["sh", "-c", f"echo prestop >> {order}"]}}})
            store.create("pods", pod("prestop", hooked))
            p = await ready(store, "prestop")
            await http_get_retry(f"http://{p['status']['podIP']}:8080/")  # handler installed
            p["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
            p["metadata"]["deletionGracePeriodSeconds"] = 10
            store.replace("pods", p)
            await until(lambda: store.try_get("pods", "default", "prestop") is None,
                        "pod never removed")
    run(scenario)
    assert order.read_text() == "prestop\nterm\n"


def test_pod_removed_from_store_is_killed_at_once() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            store.create("pods", pod("gone", server()))
            await ready(store, "gone")
            worker = node.kubelet.worker("default", "gone")
            assert worker is not None and worker.sandbox is not None
            netns = worker.sandbox.netns
            store.delete("pods", "default", "gone")
            await until(lambda: not (NETNS_DIR / netns).exists(), "sandbox never removed")
    run(scenario)


# -- dial, logs ----------------------------------------------------------------------------


def test_dial_reaches_localhost_inside_the_pod() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            store.create("pods", pod("local", server(env=[{"name": "BIND",
                                                          "value": "127.0.0.1"}])))
            await ready(store, "local")
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    reader, writer = await node.dial("default", "local", 8080)
                    break
                except ConnectionError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            await writer.drain()
            response = await reader.read()
            writer.close()
            assert response.startswith(b"HTTP/1.0 200") and response.endswith(b"local")
            with pytest.raises(ConnectionError, match="localhost:8081"):
                await node.dial("default", "local", 8081)
            with pytest.raises(ConnectionError, match="no running sandbox"):
                await node.dial("default", "absent", 8080)
    run(scenario)


def test_logs_tail_timestamps_and_follow() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            script = ("import time\nfor i in range(5): print(i, flush=True)\n"
                      "time.sleep(1)\nprint('end')")
            store.create("pods", pod("talk", container(command=["python3", "-c", script]),
                                     restartPolicy="Never"))
            await wait_log(node, "talk", "4\n")
            assert await read_logs(node, "talk", tail_lines=2) == "3\n4\n"
            stamped = await read_logs(node, "talk", timestamps=True)
            first = stamped.splitlines()[0]
            assert first.endswith("Z 0") and first[:4].isdigit()
            followed = await read_logs(node, "talk", follow=True)  # ends when the process ends
            assert followed == "0\n1\n2\n3\n4\nend\n"
            assert await read_logs(node, "talk", since_seconds=3600) == followed
    run(scenario)


def test_logs_errors_are_worded_like_kubernetes() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            store.create("pods", pod("two", server("a"), server("b", env=[
                {"name": "PORT", "value": "8081"}])))
            await ready(store, "two")
            with pytest.raises(ApiError, match=r"a container name must be specified for pod two, "
                               r"choose one of: \[a b\]"):
                node.logs("default", "two")
            with pytest.raises(ApiError, match='previous terminated container "a" in pod "two"'):
                node.logs("default", "two", "a", previous=True)
            with pytest.raises(ApiError, match='pods "nope" not found'):
                node.logs("default", "nope")
    run(scenario)


# -- services ------------------------------------------------------------------------------


def test_service_proxy_balances_over_ready_endpoints_only() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            for name in ("s1", "s2", "s3"):
                store.create("pods", pod(name, server()))
            ips = {n: (await ready(store, n))["status"]["podIP"] for n in ("s1", "s2", "s3")}
            for ip in ips.values():
                await http_get_retry(f"http://{ip}:8080/")
            cluster_ip = f"10.96.{node.config.index}.30"
            store.create("services", {"metadata": {"name": "web", "namespace": "default"},
                                      "spec": {"clusterIP": cluster_ip,
                                               "ports": [{"name": "http", "port": 80}]}})
            store.create("endpoints", endpoints("web", [ips["s1"]], not_ready=[ips["s2"]]))
            url = f"http://{cluster_ip}/"
            first = await http_get_retry(url)
            seen = {first} | {await http_get(url) for _ in range(6)}
            assert seen == {"s1"}
            ep = store.get("endpoints", "default", "web")
            ep["subsets"] = [endpoints("web", [ips["s1"], ips["s2"]])["subsets"][0]]
            store.replace("endpoints", ep)
            deadline = time.monotonic() + WAIT
            seen = set()
            while seen != {"s1", "s2"}:
                assert time.monotonic() < deadline, seen
                seen.add(await http_get(url))
            # An endpoint that refuses (s3's IP on a port nothing listens on) is skipped.
            refusing = {"addresses": [{"ip": ips["s3"]}], "ports": [{"name": "http",
                                                                     "port": 8090}]}
            ep = store.get("endpoints", "default", "web")
            ep["subsets"] = [refusing, endpoints("web", [ips["s1"]])["subsets"][0]]
            store.replace("endpoints", ep)
            await asyncio.sleep(0.2)
            assert {await http_get(url) for _ in range(6)} == {"s1"}
            # From inside a pod too (pod -> ClusterIP -> pod).
            store.create("pods", pod("client", container(command=["python3", "-c", CLIENT, url]),
                                     restartPolicy="Never"))
            await wait_pod(store, "client", lambda p: p["status"]["phase"] == "Succeeded",
                           "succeeded")
            assert "got s1" in await read_logs(node, "client")
            # Service gone: listener and address gone.
            store.delete("services", "default", "web")
            await until(lambda: cluster_ip not in node.network.service_ips(),
                        "service address never removed")
            with pytest.raises(OSError):
                await http_get(url, within=1)
    run(scenario)


def test_service_proxy_passes_half_close_and_bulk_data() -> None:
    async def scenario() -> None:
        async with running_node() as (store, node):
            # Echo server: reads everything until EOF, then answers with its length and closes.
            echo = textwrap.dedent("""
                import socket
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", 8080)); s.listen()
                while True:
                    c, _ = s.accept(); n = 0
                    while True:
                        d = c.recv(1 << 16)
                        if not d: break
                        n += len(d)
                    c.sendall(str(n).encode()); c.close()
            """)
            store.create("pods", pod("echo", container(command=["python3", "-c", echo])))
            ip = (await ready(store, "echo"))["status"]["podIP"]
            cluster_ip = f"10.96.{node.config.index}.31"
            store.create("services", {"metadata": {"name": "echo", "namespace": "default"},
                                      "spec": {"clusterIP": cluster_ip,
                                               "ports": [{"name": "http", "port": 7000}]}})
            store.create("endpoints", endpoints("echo", [ip]))
            size = 32 * 1024 * 1024
            deadline = time.monotonic() + WAIT
            while True:
                reply = b""
                with contextlib.suppress(OSError):  # until the echo server listens
                    reader, writer = await asyncio.open_connection(cluster_ip, 7000)
                    writer.write(b"x")
                    writer.write_eof()
                    reply = await reader.read()
                    writer.close()
                if reply == b"1":
                    break
                assert time.monotonic() < deadline, reply
                await asyncio.sleep(0.05)
            reader, writer = await asyncio.open_connection(cluster_ip, 7000)
            chunk = b"y" * (1 << 20)
            for _ in range(size // len(chunk)):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            assert await reader.read() == str(size).encode()
            writer.close()
    run(scenario)


# -- cleanup -------------------------------------------------------------------------------


DEAD_INSTANCE = textwrap.dedent("""
    import asyncio, sys, time
    sys.path.insert(0, sys.argv[1])
    from tests.equipment.localcluster.config import ClusterConfig
    from tests.equipment.localcluster.network import claim_index
    from tests.equipment.localcluster.node import Node
    from tests.equipment.localcluster.store import Store

    async def main():
        index, _fd = claim_index()
        store = Store()
        node = Node(store, ClusterConfig(index=index))
        await node.start()
        cmd = ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
        store.create("pods", {"metadata": {"name": "p", "namespace": "default"},
                              "spec": {"containers": [{"name": "c", "image": "x",
                                                        "command": cmd}]}})
        store.create("services", {"metadata": {"name": "s", "namespace": "default"},
                                  "spec": {"clusterIP": f"10.96.{index}.40",
                                           "ports": [{"port": 80}]}})
        while not store.get("pods", "default", "p").get("status", {}).get("podIP"):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        print(index, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_claim_index_removes_what_a_killed_instance_left() -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", DEAD_INSTANCE, str(repo)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        index = int(proc.stdout.readline())
        prefix = f"btc{index}"
        left = leftovers(prefix)
        assert any(x.startswith("netns") for x in left) and f"link {prefix}br" in left
        survivors = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                     and _netns_name_of(p) == prefix]
        proc.kill()
        proc.wait(timeout=10)
        assert leftovers(prefix), "the killed instance should leave its network behind"
        _claimed, fd = claim_index()
        try:
            assert leftovers(prefix) == []
            assert not Path(f"/run/bridge-test-cluster/{prefix}").exists()
            for p in survivors:
                assert not p.exists() or "Z" in (p / "stat").read_text().split()[2]
        finally:
            release_index(fd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _netns_name_of(proc_dir: Path) -> str | None:
    """The btc<N> prefix of the process's network namespace, if it is one of ours."""
    try:
        ino = os.stat(proc_dir / "ns" / "net").st_ino
    except OSError:
        return None
    for ns in NETNS_DIR.iterdir() if NETNS_DIR.is_dir() else []:
        if ns.name.startswith("btc") and os.stat(ns).st_ino == ino:
            return ns.name.split("-")[0]
    return None
