"""The node's pure pieces, without a cluster: environment building, `$(VAR)` expansion, log
records, probe thresholds, pod phase, service proxy tables."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from tests.equipment.localcluster import kubelet, podenv, probes, serviceproxy
from tests.equipment.localcluster.logstore import decode_record, encode_records


def _pod(**spec: object) -> dict:
    return {
        "metadata": {
            "name": "web-1", "namespace": "team", "uid": "u-1",
            "labels": {"app": "web"}, "annotations": {"note": "hi"},
        },
        "spec": {"nodeName": "bridge-node", "serviceAccountName": "default", **spec},
    }


def _svc(name: str, ip: str, ports: list[dict], ns: str = "team") -> dict:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, "ports": ports}}


KUBERNETES = _svc("kubernetes", "10.96.0.1", [{"name": "https", "port": 443}], ns="default")


def _env(container: dict, **kw: object) -> dict[str, str]:
    args: dict = {"configmaps": [], "secrets": [], "services": [], "pod_ip": "10.244.0.7",
                  "host_ip": "10.244.0.1"}
    args.update(kw)
    return podenv.container_environment(args.pop("pod", _pod()), container, **args)


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}.get
    assert podenv.expand("$(A)-$(B)", env) == "1-two"
    assert podenv.expand("$(MISSING)", env) == "$(MISSING)"
    assert podenv.expand("$$(A)", env) == "$(A)"
    assert podenv.expand("$$", env) == "$"
    assert podenv.expand("cost $5 $(A", env) == "cost $5 $(A"
    assert podenv.expand("end$", env) == "end$"


def test_service_links_named_like_the_kubelet() -> None:
    hello = _svc("hello-web", "10.96.0.20",
                 [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "admin", "port": 9000}])
    env = _env({"name": "c"}, services=[hello, KUBERNETES])
    assert env["HELLO_WEB_SERVICE_HOST"] == "10.96.0.20"
    assert env["HELLO_WEB_SERVICE_PORT"] == "8080"
    assert env["HELLO_WEB_SERVICE_PORT_HTTP"] == "8080"
    assert env["HELLO_WEB_SERVICE_PORT_ADMIN"] == "9000"
    assert env["HELLO_WEB_PORT"] == "tcp://10.96.0.20:8080"
    assert env["HELLO_WEB_PORT_8080_TCP"] == "tcp://10.96.0.20:8080"
    assert env["HELLO_WEB_PORT_8080_TCP_PROTO"] == "tcp"
    assert env["HELLO_WEB_PORT_8080_TCP_PORT"] == "8080"
    assert env["HELLO_WEB_PORT_8080_TCP_ADDR"] == "10.96.0.20"
    assert env["HELLO_WEB_PORT_9000_TCP_ADDR"] == "10.96.0.20"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "443"


def test_service_links_only_own_namespace_and_can_be_disabled() -> None:
    other = _svc("other", "10.96.0.30", [{"port": 80}], ns="elsewhere")
    headless = _svc("headless", "None", [{"port": 80}])
    env = _env({"name": "c"}, services=[other, headless, KUBERNETES])
    assert "OTHER_SERVICE_HOST" not in env and "HEADLESS_SERVICE_HOST" not in env
    mine = _svc("mine", "10.96.0.31", [{"port": 80}])
    env = _env({"name": "c"}, pod=_pod(enableServiceLinks=False), services=[mine, KUBERNETES])
    assert "MINE_SERVICE_HOST" not in env
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"  # always, as the kubelet does


def test_env_sources_and_precedence() -> None:
    cm = {"metadata": {"name": "cfg"}, "data": {"MODE": "fast", "LEVEL": "3"}}
    secret = {"metadata": {"name": "creds"},
              "data": {"TOKEN": base64.b64encode(b"s3cret").decode()}}
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}},
                    {"secretRef": {"name": "creds"}, "prefix": "SEC_"},
                    {"configMapRef": {"name": "absent", "optional": True}}],
        "env": [
            {"name": "MODE", "value": "slow-$(LEVEL)"},
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope",
                                                           "optional": True}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "URL", "value": "http://$(IP):$(KUBERNETES_SERVICE_PORT)"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "mine"},
        ],
    }
    env = _env(container, configmaps=[cm], secrets=[secret], services=[KUBERNETES])
    assert env["MODE"] == "slow-3" and env["LEVEL"] == "3"
    assert env["SEC_TOKEN"] == "s3cret" and env["PASS"] == "s3cret"
    assert env["FROM_CM"] == "3"
    assert "OPT" not in env
    assert (env["POD"], env["NS"], env["UID"]) == ("web-1", "team", "u-1")
    assert (env["APP"], env["NOTE"]) == ("web", "hi")
    assert (env["IP"], env["HOST"]) == ("10.244.0.7", "10.244.0.1")
    assert (env["NODE"], env["SA"]) == ("bridge-node", "default")
    assert env["URL"] == "http://10.244.0.7:443"  # service variables are visible to $(...)
    assert env["KUBERNETES_SERVICE_PORT"] == "mine"  # container env wins over service links


@pytest.mark.parametrize(
    ("container", "message"),
    [
        ({"envFrom": [{"configMapRef": {"name": "absent"}}]}, 'configmap "absent" not found'),
        ({"envFrom": [{"secretRef": {"name": "absent"}}]}, 'secret "absent" not found'),
        ({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "NO"}}}]},
         "couldn't find key NO in ConfigMap team/cfg"),
        ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "NO"}}}]},
         "couldn't find key NO in Secret team/creds"),
    ],
)
def test_missing_references_are_config_errors(container: dict, message: str) -> None:
    cm = {"metadata": {"name": "cfg"}, "data": {}}
    secret = {"metadata": {"name": "creds"}, "data": {}}
    with pytest.raises(podenv.ConfigError, match=message):
        _env({"name": "c", **container}, configmaps=[cm], secrets=[secret])


def test_process_environment_adds_runtime_defaults_only() -> None:
    env = podenv.process_environment({"A": "1"}, "web-1")
    assert env == {"A": "1", "PATH": podenv.DEFAULT_PATH, "HOSTNAME": "web-1"}
    assert podenv.process_environment({"PATH": "/x"}, "p")["PATH"] == "/x"


def test_log_records_round_trip() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    data = encode_records("stdout", b"one\ntwo\npart", when)
    lines = data.split(b"\n")[:-1]
    assert len(lines) == 3
    decoded = [decode_record(line) for line in lines]
    assert b"".join(content for _, content in decoded) == b"one\ntwo\npart"
    assert decoded[0][0] == when


def test_threshold_needs_consecutive_results() -> None:
    timing = probes.ProbeTiming.of({"successThreshold": 2, "failureThreshold": 2})
    t = probes.Threshold(timing)
    assert t.record(True) is None
    assert t.record(False) is None
    assert t.record(True) is None
    assert t.record(True) is True
    assert t.record(False) is True
    assert t.record(False) is False


def test_probe_defaults_and_named_ports() -> None:
    timing = probes.ProbeTiming.of({})
    assert (timing.period, timing.timeout, timing.failure_threshold) == (10, 1, 3)
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
    assert probes.resolve_port("http", container) == 8080
    assert probes.resolve_port(81, container) == 81
    with pytest.raises(ValueError, match="not a named port"):
        probes.resolve_port("grpc", container)


def test_restart_policy_and_backoff() -> None:
    assert kubelet.should_restart("Always", 0)
    assert kubelet.should_restart("OnFailure", 1) and not kubelet.should_restart("OnFailure", 0)
    assert not kubelet.should_restart("Never", 1)
    assert [kubelet.backoff_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert kubelet.exit_code_of(-9) == 137 and kubelet.exit_code_of(3) == 3


def test_pod_phase() -> None:
    def rt(state: dict, *, done: bool = False, ok: bool = False, last: dict | None = None):
        c = kubelet.ContainerRuntime({"name": "c"}, False, state=state, last_state=last or {})
        c.done, c.succeeded = done, ok
        return c

    running = rt({"running": {}})
    waiting = rt({"waiting": {"reason": "ContainerCreating"}})
    assert kubelet.pod_phase([], [running], "Always") == "Running"
    assert kubelet.pod_phase([], [running, waiting], "Always") == "Pending"
    assert kubelet.pod_phase([rt({}, done=False)], [waiting], "Always") == "Pending"
    assert kubelet.pod_phase([], [rt({}, done=True, ok=True)], "Never") == "Succeeded"
    assert kubelet.pod_phase([], [rt({}, done=True, ok=False)], "Never") == "Failed"
    crashing = rt({"waiting": {"reason": "CrashLoopBackOff"}}, last={"terminated": {}})
    assert kubelet.pod_phase([], [crashing], "Always") == "Running"


def test_service_proxy_tables() -> None:
    services = [
        _svc("web", "10.96.0.5", [{"name": "http", "port": 80}, {"name": "dns", "port": 53,
                                                                 "protocol": "UDP"}]),
        _svc("headless", "None", [{"port": 80}]),
    ]
    listeners = serviceproxy.desired_listeners(services)
    assert list(listeners) == [("10.96.0.5", 80)]
    assert listeners[("10.96.0.5", 80)].backend == ("team", "web", "http")
    endpoints = [{
        "metadata": {"name": "web", "namespace": "team"},
        "subsets": [{"addresses": [{"ip": "10.244.0.2"}],
                     "notReadyAddresses": [{"ip": "10.244.0.3"}],
                     "ports": [{"name": "http", "port": 8080}]}],
    }]
    assert serviceproxy.ready_backends(endpoints) == {
        ("team", "web", "http"): [("10.244.0.2", 8080)]
    }


def test_log_tail_and_timestamps_with_partial_lines(tmp_path: object) -> None:
    import asyncio
    from pathlib import Path

    from tests.equipment.localcluster.logstore import ContainerLog

    async def scenario() -> None:
        log = ContainerLog(Path(str(tmp_path)) / "c" / "0.log")
        log.write("stdout", b"a\nb")
        log.write("stderr", b"c\nd\n")
        log.write("stdout", b"tail-without-newline")
        log.close()

        async def read(**kw: object) -> bytes:
            return b"".join([chunk async for chunk in log.read(**kw)])  # type: ignore[arg-type]

        assert await read() == b"a\nbc\nd\ntail-without-newline"
        assert await read(tail_lines=2) == b"d\ntail-without-newline"
        assert await read(tail_lines=0) == b""
        stamped = (await read(timestamps=True)).split(b"\n")
        assert [line.split(b" ", 1)[1] for line in stamped] == [
            b"a", b"bc", b"d", b"tail-without-newline"]
        assert all(line.split(b" ", 1)[0].endswith(b"Z") for line in stamped)
        assert await read(follow=True) == b"a\nbc\nd\ntail-without-newline"  # closed: ends

    asyncio.run(scenario())
