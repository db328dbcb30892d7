"""The kubelet of the local test cluster: runs every pod in the store as host processes inside the
pod's own network namespace, and owns `pod.status`.

Per pod: a sandbox (netns + veth + IP), pod-level `net.*` sysctls, init containers in order to
completion, then every container with its postStart hook and probes (preStop runs on graceful
deletion). Containers restart per `restartPolicy` with a
CrashLoopBackOff-style delay: 1 s, doubling, capped at 10 s for tests (Kubernetes: 10 s doubling
to 5 min), reset once an instance ran for 10 s. Deletion: a pod with a deletionTimestamp first
leaves every Endpoints (bounded wait), then gets SIGTERM, SIGKILL after its grace period, and is
removed from the store; a pod deleted from the store outright is killed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dns, podenv, probes
from .config import OTHER_PROTOCOL_SIDECAR_IMAGE, OTHER_PROTOCOL_VERSION, ClusterConfig
from .errors import ApiError
from .logstore import ContainerLog
from .network import Network, Sandbox, kill_netns_processes, run_in_netns, write_sysctl
from .store import Store, now_rfc3339

Obj = dict[str, Any]
log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
BACKOFF_START = 1.0
BACKOFF_CAP = 10.0
BACKOFF_RESET_AFTER = 10.0
ENDPOINTS_LEAVE_TIMEOUT = 2.0
CONFIG_RETRY = 1.0
STOP_GRACE = 2.0  # Node.stop: SIGTERM, then SIGKILL after this
HOOK_TIMEOUT = 3600  # lifecycle hooks have no timeout of their own
PRE_STOP_EXTENSION = 2.0
# The pod conditions the kubelet owns (kubetypes.PodConditionsByKubelet): any other condition
# in a pod's status was written by someone else (a readiness gate's controller) and is kept.
KUBELET_CONDITIONS = frozenset(
    {"PodScheduled", "PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"})


class StartError(Exception):
    """The container process cannot be started (runtime: StartError, exit code 128)."""


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str


@dataclass
class Instance:
    """One run of a container: its process and log."""

    process: asyncio.subprocess.Process
    log: ContainerLog
    started_at: str
    started_mono: float
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    probe_task: asyncio.Task[None] | None = None
    kill_reason: str | None = None


@dataclass
class ContainerRuntime:
    spec: Obj
    init: bool
    restart_count: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    container_id: str = ""
    instance: Instance | None = None
    log: ContainerLog | None = None
    previous_log: ContainerLog | None = None
    done: bool = False  # finished for good (init: succeeded; others: no restart coming)
    succeeded: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": self.spec.get("image", ""),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def exit_code_of(returncode: int) -> int:
    """asyncio's negative signal numbers -> a runtime's 128+signal."""
    return 128 - returncode if returncode < 0 else returncode


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def backoff_delay(failures: int) -> float:
    return min(BACKOFF_START * 2 ** max(failures - 1, 0), BACKOFF_CAP)


def pod_phase(init: list[ContainerRuntime], main: list[ContainerRuntime], policy: str) -> str:
    """Pending until the init containers are done and every container has started once;
    Succeeded/Failed once every container is finished for good; Running otherwise."""
    for c in init:
        if c.done and not c.succeeded:
            return "Failed"
        if not c.done:
            return "Pending"
    if any(not c.done and "running" not in c.state and not c.last_state for c in main):
        return "Pending"
    if main and all(c.done for c in main):
        return "Succeeded" if all(c.succeeded for c in main) else "Failed"
    return "Running"


def readiness_gates(spec: Obj) -> list[str]:
    """The condition types of the pod's `spec.readinessGates`."""
    gates = spec.get("readinessGates") or []
    return [str(g.get("conditionType", "")) for g in gates if isinstance(g, dict)]


def unmet_gates(gates: list[str], conditions: list[Obj]) -> list[str]:
    """Why the readiness gates keep the pod from Ready, one message per gate whose condition
    is absent or not "True" (kubelet status.GeneratePodReadyCondition, its words)."""
    by_type = {c.get("type"): c for c in conditions if isinstance(c, dict)}
    messages = []
    for gate in gates:
        condition = by_type.get(gate)
        if condition is None:
            messages.append(f'corresponding condition of pod readiness gate "{gate}" does not '
                            "exist.")
        elif condition.get("status") != "True":
            messages.append(f'the status of pod readiness gate "{gate}" is not "True", but '
                            f"{condition.get('status')}")
    return messages


def foreign_conditions(pod: Obj) -> list[Obj]:
    """The conditions in the pod's status that the kubelet does not own."""
    status = pod.get("status") or {}
    return [c for c in status.get("conditions") or []
            if isinstance(c, dict) and c.get("type") not in KUBELET_CONDITIONS]


def resolve_executable(name: str, env: dict[str, str]) -> str:
    if "/" in name:
        if os.access(name, os.X_OK) and os.path.isfile(name):
            return name
        raise StartError(f'exec: "{name}": stat {name}: no such file or directory')
    found = shutil.which(name, path=env.get("PATH", podenv.DEFAULT_PATH))
    if found:
        return found
    if name == "python":  # images with Python have `python`; this host may only have python3
        return sys.executable
    raise StartError(f'exec: "{name}": executable file not found in $PATH')


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta.get("namespace", "default")
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        spec = pod.get("spec", {})
        self.policy: str = spec.get("restartPolicy") or "Always"
        self.gates = readiness_gates(spec)
        self._unmet_gates: list[str] | None = None  # as of the last status written
        self.init = [ContainerRuntime(c, True) for c in spec.get("initContainers") or []]
        self.main = [ContainerRuntime(c, False) for c in spec.get("containers") or []]
        if self.init:
            for c in self.main:
                c.state = {"waiting": {"reason": "PodInitializing"}}
        self.sandbox: Sandbox | None = None
        self.start_time = now_rfc3339()
        self.terminating = False
        self.initialized = not self.init
        self._conditions: dict[str, tuple[str, str]] = {}
        pod_dir = f"{self.namespace}_{self.name}_{self.uid}"
        self.log_dir = kubelet.config.state_dir / "pods" / pod_dir
        self.work_dir = self.log_dir / "work"
        self.task: asyncio.Task[None] | None = None
        self._lifecycle: asyncio.Task[None] | None = None

    # -- lookup --------------------------------------------------------------------------

    def container(self, name: str) -> ContainerRuntime | None:
        return next((c for c in self.init + self.main if c.name == name), None)

    @property
    def pod_ip(self) -> str:
        return str(self.sandbox.ip) if self.sandbox else ""

    # -- main flow -----------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    async def _run(self) -> None:
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self.publish()
            self.sandbox = await self.kubelet.network.add_sandbox()
            dns.write_resolv_conf(  # cluster DNS (issue 10)
                self.sandbox.netns, self.namespace, str(self.kubelet.network.config.gateway))
            await self._apply_sysctls()
            self.publish()
            for c in self.init:
                await self._run_container(c)
                if not c.succeeded:
                    self.publish()
                    return
            self.initialized = True
            self.publish()
            await asyncio.gather(*(self._run_container(c) for c in self.main))
            self.publish()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s failed in the kubelet", self.namespace, self.name)

    async def _apply_sysctls(self) -> None:
        assert self.sandbox is not None
        sysctls = (self.pod.get("spec", {}).get("securityContext") or {}).get("sysctls") or []
        for sysctl in sysctls:
            name, value = sysctl["name"], str(sysctl["value"])
            if name.startswith("net."):
                await run_in_netns(self.sandbox.netns, functools.partial(write_sysctl, name, value))
            else:
                log.warning("sysctl %s is not namespaced by network; ignored", name)

    async def _run_container(self, c: ContainerRuntime) -> None:
        failures = 0
        while not self.terminating:
            try:
                launch = self._launch_of(c)
                exit_code, terminated, ran_for = await self._run_instance(c, launch)
            except podenv.ConfigError as exc:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                self.publish()
                await asyncio.sleep(CONFIG_RETRY)
                continue
            except StartError as exc:
                start_log = self._new_log(c)
                start_log.write("stderr", f"{exc}\n".encode())
                start_log.close()
                now = now_rfc3339()
                terminated = {
                    "exitCode": 128, "reason": "StartError", "message": str(exc),
                    "startedAt": now, "finishedAt": now,
                }
                exit_code = 128
                ran_for = 0.0
            if self.terminating:
                c.state = {"terminated": terminated}
                return
            if not should_restart(self.policy if not c.init else _init_policy(self.policy),
                                  exit_code):
                c.state = {"terminated": terminated}
                c.done, c.succeeded = True, exit_code == 0
                c.ready = False
                self.publish()
                return
            if c.init and exit_code == 0:
                c.state = {"terminated": terminated}
                c.done, c.succeeded = True, True
                self.publish()
                return
            failures = 1 if ran_for >= BACKOFF_RESET_AFTER else failures + 1
            delay = backoff_delay(failures)
            c.last_state = {"terminated": terminated}
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={c.name} "
                    f"pod={self.name}_{self.namespace}({self.uid})",
                }
            }
            c.ready = False
            c.started = False
            self.publish()
            await asyncio.sleep(delay)
            if self.terminating:
                return
            c.restart_count += 1

    def _new_log(self, c: ContainerRuntime) -> ContainerLog:
        if c.log is not None:
            c.log.close()
            if c.previous_log is not None:
                with contextlib.suppress(OSError):
                    c.previous_log.path.unlink()
            c.previous_log = c.log
        c.log = ContainerLog(self.log_dir / c.name / f"{c.restart_count}.log")
        return c.log

    def _launch_of(self, c: ContainerRuntime) -> Launch:
        store = self.kubelet.store
        ns = self.namespace
        env = podenv.container_environment(
            self.pod,
            c.spec,
            configmaps=store.list("configmaps", ns)[0],
            secrets=store.list("secrets", ns)[0],
            services=store.list("services")[0],
            pod_ip=self.pod_ip,
            host_ip=str(self.kubelet.config.gateway),
        )
        image = c.spec.get("image", "")
        cwd = str(self.work_dir)
        if image == self.kubelet.config.sidecar_image:
            # `-m` puts the working directory first on sys.path, so the checkout's sidecar runs
            # without a PYTHONPATH that would leak into the pod's environment (and the laptop's).
            argv = [sys.executable, "-m", "sidecar"]
            cwd = str(REPO_ROOT)
        elif image == OTHER_PROTOCOL_SIDECAR_IMAGE:
            # `-c` puts the working directory (the checkout) first on sys.path, as `-m` does
            argv = [sys.executable, "-c",
                    "import runpy, sidecar.protocol as p; "
                    f"p.PROTOCOL_VERSION = {OTHER_PROTOCOL_VERSION}; "
                    "runpy.run_module('sidecar', run_name='__main__', alter_sys=True)"]
            cwd = str(REPO_ROOT)
        else:
            command = list(c.spec.get("command") or [])
            args = list(c.spec.get("args") or [])
            image_argv = self.kubelet.config.image_commands.get(image)
            if command:
                argv = podenv.expand_all(command + args, env)
            elif image_argv:
                argv = list(image_argv) + podenv.expand_all(args, env)
            else:
                raise StartError(
                    f'container "{c.name}" has no command: the local test cluster does not pull '
                    f'or run image "{image}"; give the container a command (or map the image in '
                    "ClusterConfig.image_commands)"
                )
            if c.spec.get("workingDir"):
                cwd = c.spec["workingDir"]
                if not os.path.isdir(cwd):
                    raise StartError(f'workingDir "{cwd}" does not exist on the node')
        hostname = self.pod.get("spec", {}).get("hostname") or self.name
        full_env = podenv.process_environment(env, hostname)
        argv[0] = resolve_executable(argv[0], full_env)
        return Launch(argv, full_env, cwd)

    async def _run_instance(self, c: ContainerRuntime, launch: Launch) -> tuple[int, Obj, float]:
        assert self.sandbox is not None
        try:
            process = await asyncio.create_subprocess_exec(
                *dns.netns_exec(self.sandbox.netns), *launch.argv,  # + resolv.conf (issue 10)
                env=launch.env,
                cwd=launch.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as exc:
            raise StartError(f"cannot start {launch.argv[0]}: {exc}") from exc
        container_log = self._new_log(c)
        started_at = now_rfc3339()
        inst = Instance(process, container_log, started_at, time.monotonic())
        c.instance = inst
        c.container_id = f"btc://{self.uid[:8]}-{c.name}-{c.restart_count}"
        inst.pumps = [
            asyncio.create_task(_pump(process.stdout, container_log, "stdout")),
            asyncio.create_task(_pump(process.stderr, container_log, "stderr")),
        ]
        if self.terminating:
            _signal_group(process, signal.SIGKILL)
        c.state = {"running": {"startedAt": started_at}}
        if not c.init:
            inst.probe_task = asyncio.create_task(self._probe(c, inst))
        self.publish()
        try:
            returncode = await process.wait()
        finally:
            if inst.probe_task:
                inst.probe_task.cancel()
            # The pipes may be held by a grandchild: end the group, then give pumps a moment.
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*inst.pumps), 1.0)
            for pump in inst.pumps:
                pump.cancel()
            container_log.close()
            c.instance = None
        exit_code = exit_code_of(returncode)
        reason = "Completed" if exit_code == 0 else "Error"
        terminated: Obj = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": now_rfc3339(),
            "containerID": c.container_id,
        }
        if returncode < 0:
            terminated["signal"] = -returncode
        if inst.kill_reason:
            terminated["message"] = inst.kill_reason
        return exit_code, terminated, time.monotonic() - inst.started_mono

    # -- probes --------------------------------------------------------------------------

    async def _probe(self, c: ContainerRuntime, inst: Instance) -> None:
        spec = c.spec
        post_start = (spec.get("lifecycle") or {}).get("postStart")
        if post_start:
            ok, message = await self._run_hook(c, post_start)
            if not ok:
                await self._kill_instance(c, inst, f"PostStartHook failed: {message}")
                return
        startup, readiness, liveness = (
            spec.get("startupProbe"), spec.get("readinessProbe"), spec.get("livenessProbe")
        )
        if startup:
            ok = await self._probe_loop(c, startup, "Startup", until_verdict=True)
            if not ok:
                await self._kill_instance(c, inst, "Startup probe failed")
                return
        c.started = True
        c.ready = readiness is None
        self.publish()
        loops: list[Coroutine[Any, Any, object]] = []
        if readiness:
            loops.append(self._probe_loop(c, readiness, "Readiness"))
        if liveness:
            loops.append(self._liveness(c, inst, liveness))
        if loops:
            await asyncio.gather(*loops)

    async def _liveness(self, c: ContainerRuntime, inst: Instance, probe: Obj) -> None:
        ok = await self._probe_loop(c, probe, "Liveness", until_verdict=False, stop_on_fail=True)
        if not ok:
            await self._kill_instance(c, inst, "Liveness probe failed")

    async def _probe_loop(
        self,
        c: ContainerRuntime,
        probe: Obj,
        kind: str,
        *,
        until_verdict: bool = False,
        stop_on_fail: bool = False,
    ) -> bool:
        timing = probes.ProbeTiming.of(probe)
        threshold = probes.Threshold(timing)
        if timing.initial_delay:
            await asyncio.sleep(timing.initial_delay)
        while True:
            ok, message = await probes.check(probe, c.spec, self.pod_ip, self._exec_runner(c))
            if not ok:
                log.info("%s probe of %s/%s[%s] failed: %s",
                         kind, self.namespace, self.name, c.name, message)
            verdict = threshold.record(ok)
            if until_verdict and verdict is not None:
                return verdict
            if stop_on_fail and verdict is False:
                return False
            if kind == "Readiness" and verdict is not None and c.ready != verdict:
                c.ready = verdict
                self.publish()
            await asyncio.sleep(timing.period)

    def _exec_runner(self, c: ContainerRuntime) -> probes.ExecRunner:
        async def run(command: list[str], limit: float) -> tuple[int, bytes]:
            assert self.sandbox is not None
            try:
                launch = self._launch_of(c)
                argv0 = resolve_executable(command[0], launch.env) if command else ""
            except (StartError, podenv.ConfigError) as exc:
                return 126, str(exc).encode()
            if not argv0:
                return 126, b"exec probe without a command"
            proc = await asyncio.create_subprocess_exec(
                *dns.netns_exec(self.sandbox.netns), argv0, *command[1:],  # issue 10
                env=launch.env, cwd=launch.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), limit)
            except TimeoutError:
                _signal_group(proc, signal.SIGKILL)
                await proc.wait()
                return -1, f"command timed out after {limit:g}s".encode()
            return proc.returncode or 0, out

        return run

    async def _run_hook(self, c: ContainerRuntime, handler: Obj) -> tuple[bool, str]:
        """A lifecycle handler (exec, httpGet, tcpSocket, sleep), bounded only by the caller."""
        if "sleep" in handler:
            await asyncio.sleep(float(handler["sleep"].get("seconds", 0)))
            return True, ""
        hook = {**handler, "timeoutSeconds": HOOK_TIMEOUT}
        return await probes.check(hook, c.spec, self.pod_ip, self._exec_runner(c))

    async def _stop_container(self, c: ContainerRuntime, grace: float, pre_stop: bool) -> None:
        """preStop hook (if asked), then SIGTERM, SIGKILL once the grace period is used up."""
        inst = c.instance
        if inst is None:
            return
        deadline = time.monotonic() + grace
        hook = (c.spec.get("lifecycle") or {}).get("preStop") if pre_stop else None
        if hook:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._run_hook(c, hook), grace)
            # As the kubelet: a hook that used up the grace period earns 2 s more.
            remaining = max(deadline - time.monotonic(), PRE_STOP_EXTENSION)
        else:
            remaining = grace
        await _terminate(inst.process, remaining)

    async def _kill_instance(self, c: ContainerRuntime, inst: Instance, reason: str) -> None:
        inst.kill_reason = f"{reason}, container will be restarted"
        c.ready = False
        self.publish()
        await _terminate(inst.process, self.grace_period())

    # -- termination ---------------------------------------------------------------------

    def grace_period(self) -> float:
        meta, spec = self.pod["metadata"], self.pod.get("spec", {})
        value = meta.get("deletionGracePeriodSeconds")
        if value is None:
            value = spec.get("terminationGracePeriodSeconds", 30)
        return float(value)

    def begin_termination(self, pod: Obj) -> None:
        if self._lifecycle is None:
            self.pod = pod
            self._lifecycle = asyncio.create_task(self._terminate_gracefully())

    async def _terminate_gracefully(self) -> None:
        try:
            await self._wait_endpoints_left()
            await self.shutdown(self.grace_period(), pre_stop=True)
            with contextlib.suppress(ApiError):
                current = self.kubelet.store.try_get("pods", self.namespace, self.name)
                if current is not None and current["metadata"]["uid"] == self.uid:
                    self.kubelet.store.delete("pods", self.namespace, self.name)
        finally:
            self.kubelet.forget(self)

    async def _wait_endpoints_left(self) -> None:
        if not self.pod_ip:
            return
        deadline = time.monotonic() + ENDPOINTS_LEAVE_TIMEOUT
        while time.monotonic() < deadline and self._listed_in_endpoints():  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # the store has no "endpoints changed" signal to wait on

    def _listed_in_endpoints(self) -> bool:
        endpoints, _ = self.kubelet.store.list("endpoints", self.namespace)
        return any(
            address.get("ip") == self.pod_ip
            for ep in endpoints
            for subset in ep.get("subsets") or []
            for address in subset.get("addresses") or []
        )

    async def shutdown(self, grace: float, *, pre_stop: bool = False) -> None:
        """(preStop hooks,) SIGTERM every container, SIGKILL after `grace`, remove the sandbox."""
        self.terminating = True
        await asyncio.gather(*(self._stop_container(c, grace, pre_stop)
                               for c in self.init + self.main))
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for c in self.init + self.main:
            if c.instance is not None:
                _signal_group(c.instance.process, signal.SIGKILL)
            c.ready = False
        self.publish()
        await self._remove_sandbox()

    def kill_now(self) -> None:
        """The pod is gone from the store: stop everything at once."""
        self.terminating = True
        if self.task is not None:
            self.task.cancel()
        for c in self.init + self.main:
            if c.instance is not None:
                _signal_group(c.instance.process, signal.SIGKILL)
        self.kubelet.background(self._remove_sandbox())
        self.kubelet.forget(self)

    async def _remove_sandbox(self) -> None:
        if self.sandbox is not None:
            kill_netns_processes(self.sandbox.netns)
            await self.kubelet.network.remove_sandbox(self.sandbox)
        for c in self.init + self.main:
            for container_log in (c.log, c.previous_log):
                if container_log is not None:
                    container_log.close()
        shutil.rmtree(self.log_dir, ignore_errors=True)

    # -- status --------------------------------------------------------------------------

    def publish(self) -> None:
        """Write this pod's status to the store (the pod may be gone: then nothing happens),
        keeping the conditions others wrote (kubelet status manager, mergePodStatus)."""
        current = self.kubelet.store.try_get("pods", self.namespace, self.name)
        if current is None or current["metadata"]["uid"] != self.uid:
            return
        status = self.status(foreign_conditions(current))
        obj = {"metadata": {"namespace": self.namespace, "name": self.name}, "status": status}
        self.kubelet.store.replace("pods", obj, status_only=True)

    def observe(self, pod: Obj) -> None:
        """A pod update from the store: someone else's write of a readiness gate's condition
        changes Ready, so the status is written again."""
        if self.gates and unmet_gates(self.gates, foreign_conditions(pod)) != self._unmet_gates:
            self.publish()

    def _condition(self, kind: str, value: bool, now: str) -> Obj:
        text = "True" if value else "False"
        previous = self._conditions.get(kind)
        if previous is None or previous[0] != text:
            self._conditions[kind] = (text, now)
        cond: Obj = {
            "type": kind,
            "status": text,
            "lastProbeTime": None,
            "lastTransitionTime": self._conditions[kind][1],
        }
        if not value and kind in ("Ready", "ContainersReady"):
            not_ready = [c.name for c in self.main if not c.ready]
            cond["reason"] = "ContainersNotReady"
            cond["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        if not value and kind == "Initialized":
            pending = [c.name for c in self.init if not c.succeeded]
            cond["reason"] = "ContainersNotInitialized"
            cond["message"] = f"containers with incomplete status: [{' '.join(pending)}]"
        return cond

    def status(self, foreign: list[Obj] | None = None) -> Obj:
        """The pod's status; `foreign` are the conditions others wrote, kept first and read
        for the readiness gates: Ready needs ready containers and every gate "True"."""
        now = now_rfc3339()
        phase = pod_phase(self.init, self.main, self.policy)
        containers_ready = bool(self.main) and all(c.ready for c in self.main)
        foreign = foreign or []
        self._unmet_gates = unmet_gates(self.gates, foreign)
        ready = self._condition("Ready", containers_ready and not self._unmet_gates, now)
        if containers_ready and self._unmet_gates:
            ready["reason"] = "ReadinessGatesNotReady"
            ready["message"] = ", ".join(self._unmet_gates)
        status: Obj = {
            "phase": phase,
            "conditions": [
                *foreign,
                self._condition("PodReadyToStartContainers", self.sandbox is not None, now),
                self._condition("Initialized", self.initialized, now),
                ready,
                self._condition("ContainersReady", containers_ready, now),
                self._condition("PodScheduled", True, now),
            ],
            "hostIP": str(self.kubelet.config.gateway),
            "hostIPs": [{"ip": str(self.kubelet.config.gateway)}],
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": [c.status() for c in self.main],
        }
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        if self.sandbox is not None:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        return status


def _init_policy(pod_policy: str) -> str:
    # Init containers are retried until they succeed unless the pod's policy is Never.
    return "Never" if pod_policy == "Never" else "OnFailure"


async def _pump(stream: asyncio.StreamReader | None, target: ContainerLog, name: str) -> None:
    if stream is None:
        return
    while True:
        data = await stream.read(65536)
        if not data:
            return
        target.write(name, data)


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def _terminate(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.returncode is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), grace)
    except TimeoutError:
        _signal_group(process, signal.SIGKILL)
        await process.wait()


class Kubelet:
    def __init__(self, store: Store, config: ClusterConfig, network: Network) -> None:
        self.store = store
        self.config = config
        self.network = network
        self._workers: dict[str, PodWorker] = {}  # by uid
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        pods, rv = self.store.list("pods")
        for pod in pods:
            self._on_pod(pod)
        self._task = asyncio.create_task(self._watch(rv), name="kubelet")

    async def _watch(self, rv: str) -> None:
        async for event in self.store.watch("pods", since=rv):
            if event.type == "DELETED":
                worker = self._workers.get(event.object["metadata"]["uid"])
                if worker is not None:
                    worker.kill_now()
            else:
                self._on_pod(event.object)

    def _on_pod(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self._workers.get(uid)
        if worker is None:
            if pod["metadata"].get("deletionTimestamp"):
                with contextlib.suppress(ApiError):
                    self.store.delete("pods", pod["metadata"].get("namespace"),
                                      pod["metadata"]["name"])
                return
            worker = PodWorker(self, pod)
            self._workers[uid] = worker
            worker.start()
        elif pod["metadata"].get("deletionTimestamp"):
            worker.begin_termination(pod)
        else:
            worker.observe(pod)

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def forget(self, worker: PodWorker) -> None:
        if self._workers.get(worker.uid) is worker:
            del self._workers[worker.uid]

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        return next(
            (w for w in self._workers.values() if w.namespace == namespace and w.name == name),
            None,
        )

    def workers(self) -> Iterable[PodWorker]:
        return list(self._workers.values())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        workers = list(self._workers.values())
        await asyncio.gather(*(w.shutdown(STOP_GRACE) for w in workers), return_exceptions=True)
        for w in workers:
            if w._lifecycle is not None:
                w._lifecycle.cancel()
        self._workers.clear()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
