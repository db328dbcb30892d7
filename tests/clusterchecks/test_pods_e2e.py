"""Point 5 through real clients: pods created with the official client and kubectl run for real
(own IP, environment, restarts, probes, sysctl, logs, the sidecar image)."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.clusterchecks.support import HOSTNAME_SERVER, get, scratch_namespace, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture
def ns(api_client: Any) -> Iterator[str]:
    with scratch_namespace(api_client, "pods") as name:
        yield name


def core_api(api_client: Any) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def pod_manifest(name: str, *containers: dict, **spec: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": list(containers), "terminationGracePeriodSeconds": 2,
                     **spec}}


def status_of(core: client.CoreV1Api, ns: str, name: str) -> Any:
    return core.read_namespaced_pod(name, ns).status


def container_status(core: client.CoreV1Api, ns: str, name: str) -> Any:
    statuses = status_of(core, ns, name).container_statuses or []
    return statuses[0] if statuses else None


def phase_is(core: client.CoreV1Api, ns: str, name: str, phase: str) -> Callable[[], bool]:
    return lambda: status_of(core, ns, name).phase == phase


def test_deployment_pods_run_with_own_ips_on_the_same_port(api_client: Any, kubectl: Any,
                                                           ns: str) -> None:
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{
                                  "name": "web", "image": "python:3.12",
                                  "command": ["python3", "-c", HOSTNAME_SERVER]}]}}},
    })
    kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "-l", "app=web", "--timeout=30s")
    pods = core_api(api_client).list_namespaced_pod(ns, label_selector="app=web").items
    assert len(pods) == 2
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2
    for p in pods:
        st = p.status.container_statuses[0]
        assert p.status.phase == "Running"
        assert st.ready and st.restart_count == 0 and st.state.running is not None
        url = f"http://{p.status.pod_ip}:8080/"
        assert wait_for("answered", functools.partial(get, url)) == p.metadata.name


def test_environment_from_api_objects(api_client: Any, ns: str) -> None:
    core = core_api(api_client)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"},
                                           "data": {"MODE": "fast", "LEVEL": "3"}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"},
                                       "data": {"TOKEN": base64.b64encode(b"s3cret").decode()}})
    core.create_namespaced_service(ns, {"metadata": {"name": "hello-web"},
                                        "spec": {"selector": {"app": "nothing"},
                                                 "ports": [{"name": "http", "port": 8080}]}})
    svc_ip = core.read_namespaced_service("hello-web", ns).spec.cluster_ip
    dump = "import json,os,sys; print(json.dumps({'env': dict(os.environ), 'argv': sys.argv[1:]}))"
    container = {
        "name": "main", "image": "python:3.12", "command": ["python3", "-c", dump],
        "args": ["$(MODE)", "$$(MODE)"],
        "envFrom": [{"configMapRef": {"name": "cfg"}},
                    {"secretRef": {"name": "creds"}, "prefix": "S_"}],
        "env": [
            {"name": "LEVEL_FROM_KEY",
             "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
            {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(HELLO_WEB_SERVICE_HOST):$(HELLO_WEB_SERVICE_PORT)"},
        ],
    }
    core.create_namespaced_pod(ns, pod_manifest("envdump", container, restartPolicy="Never"))
    wait_for("succeeded", phase_is(core, ns, "envdump", "Succeeded"))
    out = json.loads(core.read_namespaced_pod_log("envdump", ns))
    env = out["env"]
    assert env["MODE"] == "fast" and env["S_TOKEN"] == "s3cret" and env["PASSWORD"] == "s3cret"
    assert env["LEVEL_FROM_KEY"] == "3"
    assert (env["MY_NAME"], env["MY_NS"]) == ("envdump", ns)
    assert env["MY_IP"] == status_of(core, ns, "envdump").pod_ip
    assert env["HOSTNAME"] == "envdump"
    assert env["HELLO_WEB_SERVICE_HOST"] == svc_ip
    assert env["HELLO_WEB_SERVICE_PORT"] == "8080"
    assert env["HELLO_WEB_SERVICE_PORT_HTTP"] == "8080"
    assert env["HELLO_WEB_PORT"] == f"tcp://{svc_ip}:8080"
    assert env["HELLO_WEB_PORT_8080_TCP_ADDR"] == svc_ip
    assert env["URL"] == f"http://{svc_ip}:8080"
    kube = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert env["KUBERNETES_SERVICE_HOST"] == kube and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert out["argv"] == ["fast", "$(MODE)"]
    assert "HOME" not in env and "PYTEST_CURRENT_TEST" not in env  # nothing of the host


def test_missing_configmap_key_is_create_container_config_error(api_client: Any,
                                                                 ns: str) -> None:
    core = core_api(api_client)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {}})
    c = {"name": "main", "image": "python:3.12", "command": ["sleep", "100"],
         "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}
    core.create_namespaced_pod(ns, pod_manifest("cfgerr", c))

    def waiting() -> Any:
        st = container_status(core, ns, "cfgerr")
        return st and st.state.waiting and st.state.waiting.reason == "CreateContainerConfigError"
    wait_for("CreateContainerConfigError", waiting)
    st = container_status(core, ns, "cfgerr")
    assert st.state.waiting.message == f"couldn't find key k in ConfigMap {ns}/cfg"
    assert status_of(core, ns, "cfgerr").phase == "Pending"


def test_container_without_command_fails_visibly(api_client: Any, kubectl: Any, ns: str) -> None:
    core = core_api(api_client)
    core.create_namespaced_pod(ns, pod_manifest("nocmd", {"name": "main", "image": "nginx"}))
    wait_for("restarted", lambda: (st := container_status(core, ns, "nocmd"))
             and st.restart_count >= 1)
    st = container_status(core, ns, "nocmd")
    assert st.last_state.terminated.reason == "StartError"
    assert "has no command" in st.last_state.terminated.message
    assert not st.ready
    assert "has no command" in kubectl("logs", "-n", ns, "nocmd")


def test_restart_always_backs_off_and_keeps_previous_logs(api_client: Any, kubectl: Any,
                                                          ns: str) -> None:
    core = core_api(api_client)
    c = {"name": "main", "image": "busybox",
         "command": ["sh", "-c", "echo attempt; exit 3"]}
    core.create_namespaced_pod(ns, pod_manifest("crash", c))
    wait_for("restarted", lambda: (st := container_status(core, ns, "crash"))
             and st.restart_count >= 1 and st.state.waiting is not None)
    st = container_status(core, ns, "crash")
    assert st.state.waiting.reason == "CrashLoopBackOff"
    assert st.last_state.terminated.exit_code == 3
    assert kubectl("logs", "-n", ns, "crash", "--previous") == "attempt\n"


def test_probes_readiness_liveness_startup(api_client: Any, ns: str) -> None:
    core = core_api(api_client)
    # Listens only after 1.5 s: the first readiness probes fail, later ones pass.
    late = "import time; time.sleep(1.5)\n" + HOSTNAME_SERVER
    readiness = {"name": "main", "image": "python:3.12", "command": ["python3", "-c", late],
                 "ports": [{"name": "web", "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"port": "web", "path": "/"}, "periodSeconds": 1}}
    core.create_namespaced_pod(ns, pod_manifest("ready", readiness))
    seen_running_unready = wait_for(
        "running but not ready",
        lambda: (st := container_status(core, ns, "ready")) and st.state.running and not st.ready)
    assert seen_running_unready
    wait_for("ready", lambda: container_status(core, ns, "ready").ready)

    liveness = {"name": "main", "image": "busybox", "command": ["sleep", "1000"],
                "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1,
                                  "failureThreshold": 1}}
    core.create_namespaced_pod(ns, pod_manifest("live", liveness))
    wait_for("restarted by liveness",
             lambda: (st := container_status(core, ns, "live")) and st.restart_count >= 1)

    startup = {"name": "main", "image": "python:3.12", "command": ["python3", "-c", late],
               "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1,
                                "failureThreshold": 30},
               "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1,
                                 "failureThreshold": 1}}
    core.create_namespaced_pod(ns, pod_manifest("startup", startup))
    wait_for("started and ready", lambda: (st := container_status(core, ns, "startup"))
             and st.started and st.ready)
    # The liveness probe (1 failure = restart) did not run while the server was starting.
    assert container_status(core, ns, "startup").restart_count == 0


def test_pod_sysctl_unprivileged_port_start(api_client: Any, ns: str) -> None:
    core = core_api(api_client)
    c = {"name": "main", "image": "busybox",
         "command": ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]}
    core.create_namespaced_pod(ns, pod_manifest(
        "sysctl", c, restartPolicy="Never",
        securityContext={"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start",
                                      "value": "0"}]}))
    wait_for("succeeded", phase_is(core, ns, "sysctl", "Succeeded"))
    assert core.read_namespaced_pod_log("sysctl", ns).strip() == "0"


def test_logs_follow_tail_and_errors(api_client: Any, kubectl: Any, ns: str) -> None:
    core = core_api(api_client)
    script = "import time\nfor i in range(4): print(i, flush=True)\ntime.sleep(1)\nprint('end')"
    core.create_namespaced_pod(ns, pod_manifest(
        "talk", {"name": "main", "image": "python:3.12", "command": ["python3", "-c", script]},
        {"name": "other", "image": "busybox", "command": ["sleep", "1000"]}))
    wait_for("running", phase_is(core, ns, "talk", "Running"))
    assert kubectl("logs", "-n", ns, "talk", "-c", "main", "-f") == "0\n1\n2\n3\nend\n"
    assert kubectl("logs", "-n", ns, "talk", "-c", "main", "--tail=2") == "3\nend\n"
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod_log("talk", ns)
    assert info.value.status == 400
    assert "a container name must be specified for pod talk" in info.value.body


def test_sidecar_image_runs_the_sidecar(api_client: Any, cluster: Any, ns: str) -> None:
    import asyncssh

    from sidecar.protocol import DEFAULT_IMAGE, HOST_KEY_LOG_PREFIX

    core = core_api(api_client)
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    c = {"name": "proxy", "image": DEFAULT_IMAGE,
         "env": [{"name": "BRIDGE_AUTHORIZED_KEY", "value": key},
                 {"name": "BRIDGE_PORTS", "value": "8080"}]}
    core.create_namespaced_pod(ns, pod_manifest("side", c))

    def host_key_logged() -> bool:
        try:
            return HOST_KEY_LOG_PREFIX in core.read_namespaced_pod_log("side", ns)
        except ApiException as exc:  # 400 until the container has started
            assert exc.status == 400, exc
            return False
    wait_for("printed its host key", host_key_logged)
