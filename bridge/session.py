"""One swap session, from resolving TARGET to restoring the cluster.

The flow (see DESIGN.md): resolve -> take the lock (annotations on the original) -> create the
proxy Deployment -> wait for its pod and read the sidecar's host key from the log ->
port-forward + SSH (pinned host key, fresh client key) -> remote forward every port -> the
proxy turns Ready -> read the pod's environment -> scale the original to zero -> run the child
(or hold, in attach mode) -> restore.

Whatever ends the session (child exit, Ctrl-C, SIGTERM, SIGHUP, an error), a LIFO cleanup
stack runs every undo step, shielded from cancellation; further signals while it runs are
acknowledged, not obeyed. While a child runs, signals are forwarded to it and its exit ends the
session. A heartbeat task refreshes the lock; a watchdog reconnects the tunnel when it drops.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from bridge import (
    controllers,
    diagnose,
    endpoints,
    envsyntax,  # [ide]
    plan,
    resources,
    restore,
    state,
    target,
    trust,
)
from bridge import env as envmod
from bridge import outbound as outbound_mod  # OUTBOUND(issue 10)
from bridge.errors import BridgeError
from bridge.ide import envfile as ide_envfile  # [ide]
from bridge.kube import ApiError, Kube, NamespaceNotFound, Obj
from bridge.progress import Progress
from sidecar import protocol

POLL = 0.25
LOG_TAIL = 5
CHILD_GRACE = 5.0
# On a reconnect, how long a refused remote forward is retried: a sidecar that has not yet
# noticed the previous connection died holds its ports until its keepalives give up
# (protocol.DEFAULT_KEEPALIVE_SECONDS x KEEPALIVE_COUNT_MAX), plus a margin.
FORWARD_PATIENCE = 2 * protocol.DEFAULT_KEEPALIVE_SECONDS * protocol.KEEPALIVE_COUNT_MAX
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# After SIGHUP (the terminal is gone: nobody can press Ctrl-C any more), SIGTERM (an IDE,
# systemd or CI wants bridge gone, and SIGKILLs it if it stays) or a second Ctrl-C, a command
# that keeps running is stopped after this long, so the swap cannot outlive the request.
END_GRACE = CHILD_GRACE
# On a reconnect during the hand-over, how many times the tunnel may drop before bridge gives up.
HAND_OVER_ATTEMPTS = 3
READY, CHILD_EXITED, TUNNEL_CLOSED = "ready", "child exited", "tunnel closed"
_BAD_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                "ErrImageNeverPull"}


class NotOurs(BridgeError):
    """The session cannot go on: the Deployment is no longer locked by it (restored, taken,
    deleted), or its proxy Deployment is gone."""


def default_owner() -> str:
    if os.environ.get("BRIDGE_OWNER"):
        return os.environ["BRIDGE_OWNER"]
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class SwapOptions:
    target: str
    command: list[str] = field(default_factory=list)
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    container: str | None = None
    ports: tuple[str, ...] = ()
    env_file: str | None = None
    env_json: str | None = None
    env_syntax: str = "dotenv"  # [ide] --env-syntax: how --env-file is written
    sidecar_image: str = protocol.DEFAULT_IMAGE
    timeout: float = 120.0
    wait: bool = True
    heartbeat_interval: float = state.DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_ttl: float = state.DEFAULT_HEARTBEAT_TTL
    keepalive_interval: float = 5.0  # SSH keepalives; 3 missed ones end the connection
    owner: str = field(default_factory=default_owner)
    env_allow: tuple[str, ...] = ()  # security: pod variables taken although held back
    allow_host_access: bool = False  # security: allow templates with host namespaces
    outbound: str | None = None  # OUTBOUND(issue 10): inject|proxy|none; None: inject if torsocks
    forwards: tuple[str, ...] = ()  # OUTBOUND(issue 10): --forward SERVICE:PORT[:LOCAL]
    mount_dir: str | None = None  # files (issue 15): --mount DIR
    mount_mode: str | None = None  # files (issue 15): --mount-mode auto|copy|live
    mount_rw: bool = False  # files (issue 15): --mount-rw


class CleanupStack:
    """Undo steps, run last-in first-out; every step runs whatever the others did."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self.failures: list[str] = []

    def push(self, what: str, step: Callable[[], Awaitable[Any]]) -> None:
        self.steps.append((what, step))

    async def unwind(self) -> None:
        while self.steps:
            what, step = self.steps.pop()
            try:
                await step()
            except Exception as e:  # one failing step must not skip the others
                self.failures.append(f"{what}: {e}")
                self.progress.error(f"{what} failed: {e}")


@dataclass
class Link:
    """The live connection to the sidecar: port-forward + SSH + remote forwards."""

    pod: str
    forwarder: Any
    tunnel: Any

    async def close(self) -> None:
        """Close SSH then the port-forward; each bounded, the second whatever the first did."""
        try:
            with anyio.move_on_after(5):
                await self.tunnel.close()
        finally:
            with anyio.move_on_after(5):
                await self.forwarder.close()


class Session:
    def __init__(self, opts: SwapOptions, progress: Progress) -> None:
        self.opts = opts
        self.progress = progress
        self.stack = CleanupStack(progress)
        self.kube: Kube | None = None
        self.lock: state.Lock | None = None
        self.link: Link | None = None
        self.child: Any = None
        self.body_scope: anyio.CancelScope | None = None
        self.outer: anyio.abc.TaskGroup | None = None
        self.interrupted: int | None = None
        self.sigints = 0  # SIGINTs passed to the command
        self.ending = False  # the grace timer for a command that must end is running
        self.restoring = False
        self.attach_mode_held = False
        self.reconnected = False  # the tunnel was lost and re-made at least once
        self.cluster_touched = False
        self.restore_outcome: restore.Outcome | None = None
        self.name = ""
        self.ports: list[target.PortMap] = []
        self.outbound: outbound_mod.Outbound | None = None  # OUTBOUND(issue 10)
        self.drift = controllers.DriftWatch()  # [realbeh] armed once the original is at 0
        self.drift_armed = False
        self.said_waiting = ""  # [realbeh] the last scheduling/gate message shown
        self.files_mode: str | None = None  # files (issue 15)
        self.files_note = ""  # files (issue 15)
        self.files: Any = None  # files (issue 15): a mounts.Files once provided

    # -- the whole session ----------------------------------------------------------------

    async def run(self) -> int:
        """Run the session; the exit code bridge should end with. Raises BridgeError on failure
        after the cleanup ran (its message says what was left)."""
        code = 1
        error: BridgeError | None = None
        async with anyio.create_task_group() as outer:
            self.outer = outer
            await outer.start(self._signals)
            try:
                finished = False
                with anyio.CancelScope() as self.body_scope:
                    code = await self._body()
                    finished = True
                if not finished and self.interrupted is not None:
                    code = 0 if self.attach_mode_held else 128 + self.interrupted
            except BridgeError as e:
                error = e
            except BaseExceptionGroup as eg:
                error = _first_bridge_error(eg)
                if error is None:
                    raise
            finally:
                self.restoring = True
                with anyio.CancelScope(shield=True):
                    await self.stack.unwind()
                outer.cancel_scope.cancel()
        failed = bool(self.stack.failures) or (
            self.restore_outcome is not None and not self.restore_outcome.ok)
        if error is not None:
            raise BridgeError(final_message(str(error), touched=self.cluster_touched,
                                            failed=failed), exit_code=error.exit_code)
        if failed:
            self.progress.error("restoring was incomplete, see the messages above")
            return code or 1
        return code

    async def _signals(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(*SIGNALS) as receiver:
            task_status.started()
            async for sig in receiver:
                name = signal.Signals(sig).name
                if self.child is not None and self.child.returncode is None:
                    self.progress.info(f"{name}: passing it to the command")
                    self.child.send_signal(sig)
                    if sig == signal.SIGINT:
                        self.sigints += 1
                    if must_end(sig, self.sigints) and not self.ending \
                            and not self.restoring and self.outer is not None:
                        self.ending = True
                        self.outer.start_soon(self._end_after_grace, sig)
                elif self.restoring:
                    self.progress.warn(f"{name}: already restoring the cluster, please wait "
                                       "(if bridge is killed, run `bridge restore` to finish)")
                else:
                    self.progress.info(f"{name}: ending the session")
                    self.interrupted = int(sig)
                    if self.body_scope is not None:
                        self.body_scope.cancel()

    async def _end_after_grace(self, sig: int) -> None:
        """The command was asked to end and may not: after END_GRACE, the session ends (the
        cleanup stops the command's tree, then restores)."""
        await anyio.sleep(END_GRACE)
        if self.child is not None and self.child.returncode is None and not self.restoring:
            why = " (the terminal is gone)" if sig == signal.SIGHUP else ""
            self.progress.warn(f"the command still runs {END_GRACE:g}s after "
                               f"{signal.Signals(sig).name}{why}; stopping it and restoring "
                               "the cluster")
            self.interrupted = int(sig)
            if self.body_scope is not None:
                self.body_scope.cancel()

    async def _body(self) -> int:
        await self._prepare()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat)
            await self._start_proxy()
            if self.opts.command:
                await self._start_child()
            self._refuse_squatted_ports()  # security: item 7
            if self.child is None or await self._wait_child_listening():
                await self._hand_over()
            tg.start_soon(self._watchdog)
            code = await self._hold()
            tg.cancel_scope.cancel()
        return code

    # -- setup ------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        o, p = self.opts, self.progress
        # OUTBOUND(issue 10): decided before anything changes (a missing torsocks is an error)
        self.outbound_mode, hint = outbound_mod.choose_mode(o.outbound,
                                                            outbound_mod.find_torsocks())
        self.outbound_forwards = [outbound_mod.parse_forward(f) for f in o.forwards]
        if hint:
            p.warn(hint)
        for option, path in (("--env-file", o.env_file), ("--env-json", o.env_json)):
            problem = path and output_path_problem(option, path)
            if problem:
                raise BridgeError(f"{problem}; nothing was changed")
        self.files_mode, self.files_note = _files_mode(o)  # files (issue 15), before any change
        self.kube = kube = await Kube.connect(o.kubeconfig, o.context, o.namespace)
        self.stack.push("closing the API connection", kube.close)
        self.stack.push("closing the tunnel", self._close_link)
        ns = kube.namespace
        p.detail(f"context {kube.context}, namespace {ns}, API {kube.host}")

        deployment, services = await resolve_target(kube, o.target)
        self.name = name = target.name_of(deployment)
        container = target.choose_container(deployment, services, o.container)
        self.container = str(container["name"])
        self.ports = target.choose_ports(container, services, o.ports)
        # [realbeh] controllers that would undo the swap: said before anything changes
        fighting = controllers.findings(deployment, await kube.list_scaled_objects())
        for finding in fighting:
            p.warn(finding.line())
        self.drift = controllers.DriftWatch(known=fighting)

        decision = state.decide(state.decode(_annotations(deployment)), now(), o.heartbeat_ttl)
        if isinstance(decision, state.RepairFirst):
            lk = decision.lock
            p.info(f"deployment/{name} was swapped by {lk.owner} (session {lk.session}) whose "
                   f"heartbeat stopped {state.describe_age(decision.silent_for)} ago; "
                   "restoring it first")
            self.cluster_touched = True  # the repair changes the cluster, even if it fails
            with anyio.CancelScope(shield=True):  # a Ctrl-C now ends bridge after the repair
                out = await restore.restore(kube, name, p, lock=lk, wait=True,
                                            wait_timeout=o.timeout)
            if not out.ok:
                raise BridgeError(f"could not restore the stale session on deployment/{name}; "
                                  "fix it as shown above, then try again")
            deployment = await kube.get_deployment(name)
            decision = state.decide(state.decode(_annotations(deployment)), now(),
                                    o.heartbeat_ttl)
        unchanged = ("the stale session was restored, nothing else was changed"
                     if self.cluster_touched else "nothing was changed")
        if isinstance(decision, state.Refuse):
            raise BridgeError(
                f"deployment/{name} is already swapped by {decision.holder} since "
                f"{state.format_time(decision.since)} (session {decision.session}); "
                f"ask them to end it, or run `bridge restore {name}` if that session is dead; "
                + unchanged)
        if isinstance(decision, state.Doubtful):  # security: a lock bridge did not write
            raise BridgeError(f"{decision.explain(name)}; {unchanged}")
        if not isinstance(decision, state.Proceed):
            raise BridgeError(f"deployment/{name} is locked; {unchanged}")

        from bridge import tunnel as tunnelmod

        self.session_id = secrets.token_hex(4)
        self.client_key = tunnelmod.new_client_key()
        replicas = int(deployment.get("spec", {}).get("replicas", 1))
        t = now()
        self.lock = state.Lock(
            session=self.session_id, owner=o.owner, replicas=replicas,
            proxy=plan.proxy_name(name, self.session_id),
            ports=",".join(pm.spec() for pm in self.ports), started_at=t, heartbeat=t)
        plan_opts = plan.Options(
            container=self.container, ports=self.ports, session=self.session_id,
            owner=o.owner, authorized_key=tunnelmod.public_key_line(self.client_key),
            image=o.sidecar_image, allow_host_access=o.allow_host_access,
            # [realbeh] small sidecar resources within the namespace's LimitRanges
            resources=resources.sidecar_resources(await kube.list_limit_ranges()),
            files=self.files_mode is not None, files_writable=o.mount_rw)  # files (issue 15)
        self.manifest = plan.plan_proxy(deployment, plan_opts)
        if self.files_mode is not None:  # files (issue 15)
            for skipped in plan.files_plan(deployment["spec"]["template"]["spec"], container,
                                           plan_opts).skipped:
                p.warn(f"not bringing the pod's files at {skipped}")
        self.manifest["metadata"]["namespace"] = ns
        # Pushed before the lock is taken: if the patch's outcome is unknown (cancelled by a
        # signal, or no answer), restoring finds out, and touches only a lock of ours.
        self.stack.push(f"restoring deployment/{name}", self._restore)
        try:
            await kube.patch_deployment(name, state.lock_patch(
                self.lock, deployment.get("metadata", {}).get("resourceVersion")))
        except ApiError as e:
            if e.status != 0:  # the API server refused: the lock was not taken
                self.stack.steps.pop()
            else:  # no answer: the lock may have been taken (the restore step finds out)
                self.cluster_touched = True
            if e.status == 409:
                raise BridgeError(f"deployment/{name} changed while bridge was taking it "
                                  f"(another swap?); {unchanged}; try again") from e
            raise
        self.cluster_touched = True
        p.info(f"swapping deployment/{name} (container {self.container}, ports "
               f"{self.lock.ports}) in namespace {ns}, session {self.session_id}")

    async def _restore(self) -> None:
        assert self.kube is not None and self.lock is not None
        self.progress.info(f"restoring deployment/{self.name}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._beat_while_restoring)
            outcome = await restore.restore(
                self.kube, self.name, self.progress, lock=self.lock, wait=self.opts.wait,
                wait_timeout=self.opts.timeout)
            tg.cancel_scope.cancel()
        self.restore_outcome = outcome
        if outcome.ok:
            self.progress.info(f"deployment/{self.name} restored")

    async def _start_proxy(self) -> None:
        kube, o, p = self._kube(), self.opts, self.progress
        created = await kube.create_deployment(self.manifest)
        self.proxy_uid = str(created.get("metadata", {}).get("uid") or "")  # security: trust
        assert self.lock is not None
        p.info(f"created proxy deployment/{self.lock.proxy}")
        try:
            with anyio.fail_after(o.timeout):
                self.link = await self._connect(first=True, forward=False)
        except TimeoutError:
            raise BridgeError(f"timed out after {o.timeout:g}s waiting for the proxy pod of "
                              f"deployment/{self.lock.proxy} to start") from None
        pod_env = await self.link.tunnel.env()
        # bridge's own variables (not the pod's: never filtered by envmod.hold_back)
        bridge_env: dict[str, str] = {}
        if self.files_mode is not None:  # files (issue 15)
            bridge_env[protocol.ENV_ROOT] = await self._provide_files(self.link)
        # OUTBOUND(issue 10): start the proxy, add its variables to the child's env / env file
        self.outbound = await outbound_mod.start(
            lambda: self.link.tunnel.connection if self.link else None,
            self.outbound_mode, self.outbound_forwards)
        self.stack.push("stopping the outbound proxy", self.outbound.close)
        if self.outbound.describe():
            p.info(self.outbound.describe())
        self.child_env = self.outbound.child_env(
            {**envmod.overlay(os.environ, pod_env, self.opts.env_allow), **bridge_env})
        if not o.command:
            bridge_env.update({**self.outbound.forward_env(pod_env),
                               **self.outbound.attach_env()})
        self._write_env_files(pod_env, bridge_env)
        if not o.command and self.env_file and self.outbound.attach_hint(self.env_file):
            p.info(self.outbound.attach_hint(self.env_file))
        # OUTBOUND(issue 10) end

    async def _provide_files(self, link: Link) -> str:  # files (issue 15)
        """The pod's files under a directory (copied or mounted live); removed at the end."""
        from bridge import mounts

        assert self.files_mode is not None
        self.progress.info(self.files_note)
        if self.opts.mount_rw and self.files_mode == "copy":
            self.progress.warn("--mount-rw: in copy mode, writes stay in the local copy")
        self.files = files = mounts.Files(
            link.tunnel.connection, self.files_mode, self.opts.mount_dir,
            writable=self.opts.mount_rw, progress=self.progress, session=self.session_id,
            copy_limit=mounts.COPY_LIMIT)
        self.stack.push("removing the pod's files", files.close)
        return await files.start()

    async def _hand_over(self) -> None:
        """Remote forwards on (so the proxy turns Ready), then the original out. The proxy only
        gets traffic once the laptop side listens, and the original only goes once the
        Services send traffic to the proxy: no request finds nobody. The watchdog only runs
        from the hand-over on, so a tunnel drop until then is handled here."""
        o, p, link = self.opts, self.progress, self.link
        assert link is not None
        patience = 0.0
        ready = ""
        for attempt in range(1, HAND_OVER_ATTEMPTS + 1):
            if link.tunnel.is_closed():
                p.warn("connection to the proxy pod lost "
                       f"{'before' if attempt == 1 else 'during'} the hand-over; reconnecting")
                link = await self._reconnect_for_hand_over(link)
                patience = FORWARD_PATIENCE  # the sidecar may still hold the ports
            try:
                await self._forward(link, patience=patience)
            except BridgeError:
                if link.tunnel.is_closed():
                    continue
                raise
            try:
                with anyio.fail_after(o.timeout):
                    ready = await self._wait_proxy_ready(link)
            except TimeoutError:
                raise BridgeError(f"timed out after {o.timeout:g}s waiting for proxy pod "
                                  f"{link.pod} to become Ready") from None
            if ready != TUNNEL_CLOSED:
                break
        if ready != READY and ready != CHILD_EXITED:
            raise BridgeError(f"the connection to the proxy pod dropped {HAND_OVER_ATTEMPTS} "
                              "times during the hand-over; see the proxy pod's log")
        if self._child_exited():
            return  # the command is gone already: keep the original serving
        await self._scale_original_to_zero()
        await self._wait_drained(link.pod)
        assert self.lock is not None
        p.info(f"scaled deployment/{self.name} to 0 (was {self.lock.replicas}); traffic for "
               + ", ".join(f"port {pm.remote} -> localhost:{pm.local}" for pm in self.ports))

    def _child_exited(self) -> bool:
        return self.child is not None and self.child.returncode is not None

    async def _scale_original_to_zero(self) -> None:
        """Only while the lock is still ours (a colleague's `bridge restore` may have cleared
        it since the last heartbeat): the patch is conditional on what was read."""
        kube = self._kube()
        for _ in range(5):
            dep = await self._check_still_ours()
            patch = plan.scale_patch(0)
            rv = dep.get("metadata", {}).get("resourceVersion")
            if rv:
                patch["metadata"] = {"resourceVersion": rv}
            try:
                await kube.patch_deployment(self.name, patch)
                self.drift_armed = True  # [realbeh] from now on replicas should stay 0
                return
            except ApiError as e:
                if e.status != 409:
                    raise
        raise BridgeError(f"deployment/{self.name} kept changing while bridge scaled it to 0")

    async def _reconnect_for_hand_over(self, old: Link) -> Link:
        self.link = None
        with anyio.CancelScope(shield=True):
            await old.close()
        self.reconnected = True
        try:
            with anyio.fail_after(self.opts.timeout):
                self.link = await self._connect(first=False, forward=False)
        except TimeoutError:
            raise BridgeError(f"timed out after {self.opts.timeout:g}s reconnecting to the "
                              "proxy pod") from None
        if self.files is not None:  # files (issue 15): live mount on the new link
            await self.files.reattach(self.link.tunnel.connection)
        return self.link

    def _kube(self) -> Kube:
        assert self.kube is not None
        return self.kube

    async def _connect(self, first: bool, forward: bool = True) -> Link:
        """Find the proxy pod, read its host key, port-forward + SSH, remote-forward the ports."""
        from bridge import portforward
        from bridge import tunnel as tunnelmod

        kube, p = self._kube(), self.progress
        pod, host_key = await self._wait_proxy_pod(first)
        forwarder = portforward.PortForwarder(kube.api_client, kube.namespace, pod)
        try:
            tun = await tunnelmod.Tunnel.connect(
                host="127.0.0.1", port=plan.ssh_port_of(self.manifest, self.container),
                client_key=self.client_key,
                host_key=host_key, tunnel=forwarder,
                keepalive_interval=self.opts.keepalive_interval)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await forwarder.close()
            raise
        link = Link(pod, forwarder, tun)
        try:
            info = await tun.version()
            p.detail(f"sidecar {info.get('sidecar')} protocol {info.get('protocol')}")
            if forward:
                await self._forward(link, patience=0.0 if first else FORWARD_PATIENCE)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await link.close()
            raise
        p.info(f"tunnel to pod {pod} up")
        return link

    async def _forward(self, link: Link, patience: float = 0.0) -> None:
        """Remote-forward every port. A refusal is retried for `patience` seconds: after a
        reconnect the sidecar may still hold the ports for the connection that died."""
        from bridge import tunnel as tunnelmod

        for pm in self.ports:
            waiter = None
            deadline = time.monotonic() + patience
            while True:
                try:
                    await link.tunnel.forward(pm.remote, "127.0.0.1", pm.local)
                    break
                except tunnelmod.ForwardRefused:
                    if time.monotonic() >= deadline:
                        raise
                if waiter is None:
                    waiter = self.progress.waiting(
                        f"the sidecar to release port {pm.remote} (still held for the "
                        "connection that dropped)")
                waiter.tick()
                await anyio.sleep(POLL)
            if waiter is not None:
                waiter.done()
            self.progress.detail(f"remote forward {link.pod}:{pm.remote} -> 127.0.0.1:{pm.local}")

    async def _wait_proxy_pod(self, first: bool) -> tuple[str, str]:
        """The running proxy pod and its host key; fails fast when the pod cannot start."""
        kube = self._kube()
        waiter = self.progress.waiting("the proxy pod to start" if first
                                       else "the proxy pod to accept a new tunnel")
        selector = f"{state.SESSION_LABEL}={self.session_id}"
        checked = time.monotonic()
        last_problem = ""
        while True:
            if not first and time.monotonic() - checked > 2:
                await self._still_ours_unless_unsure()  # the proxy may be gone for good
                checked = time.monotonic()
            pods = [q for q in await kube.list_pods(selector)
                    if not q.get("metadata", {}).get("deletionTimestamp")]
            pods = await self._proven_pods(pods)  # security: never a pod we cannot prove ours
            pods.sort(key=lambda q: str(q.get("metadata", {}).get("creationTimestamp", "")))
            if first:  # [realbeh] admission refusals fail now; scheduling is waited out
                await self._diagnose_proxy(selector, pods)
            if pods:
                pod = pods[-1]
                pname = target.name_of(pod)
                if first:
                    await self._check_pod_failure(pod)
                else:  # a restart or a crash loop is what we wait out here, not a failure
                    problem = pod_problem(pod, self.container, past=False)
                    if problem and problem != last_problem:
                        self.progress.warn(f"proxy pod {pname}: {state.printable(problem, 300)}"
                                           "; waiting for it")  # security: escaped
                    last_problem = problem
                if _container_running(pod, self.container):
                    log = await kube.pod_log(pname, self.container,  # security: bounded,
                                             limit_bytes=trust.HOST_KEY_LOG_LIMIT)  # first line
                    host_key = trust.host_key_announcement(log)
                    if host_key:
                        waiter.done(f"proxy pod {pname} running ({waiter.elapsed():.1f}s)")
                        return pname, host_key
            waiter.tick()
            await anyio.sleep(POLL)

    async def _proven_pods(self, pods: list[Obj]) -> list[Obj]:
        """security: only pods proven to be the proxy Deployment's (trust.proven_pods); each
        other pod is reported once and ignored."""
        proven, refused = await trust.proven_pods(
            self._kube(), pods, self.proxy_uid, self.manifest["spec"]["template"]["spec"],
            self.session_id)
        self.untrusted: set[str] = getattr(self, "untrusted", set())
        for name in set(refused) - self.untrusted:
            self.untrusted.add(name)
            self.progress.warn("ignoring pod " + trust.describe(
                state.printable(name), refused[name]) + " (not bridge's proxy)")
        return proven
    async def _diagnose_proxy(self, selector: str, pods: list[Obj]) -> None:
        """[realbeh] Fail at once when admission refuses the proxy pod (quota, LimitRange, Pod
        Security, webhooks); say once what a pending pod waits for (Unschedulable, gates)."""
        replicasets = await self._kube().list_replicasets(selector) if not pods else []
        verdict = diagnose.diagnose(replicasets, pods)
        if verdict is None:
            return
        assert self.lock is not None
        if verdict.action == diagnose.FAIL:
            raise BridgeError(diagnose.refusal_message(self.lock.proxy, verdict))
        line = verdict.line()
        if line != self.said_waiting:
            self.said_waiting = line
            self.progress.warn(f"proxy pod waiting: {line}")

    async def _check_pod_failure(self, pod: Obj) -> None:
        pname = target.name_of(pod)
        # Until a first tunnel was up, a sidecar that exited once fails the start; after a
        # reconnect, a restart is history and only the present state counts.
        reason = pod_problem(pod, self.container, past=not self.reconnected)
        if not reason:
            return
        tail = ""
        try:
            log = await self._kube().pod_log(pname, self.container, tail_lines=LOG_TAIL,
                                             limit_bytes=16384)  # security: bounded read
            lines = [state.printable(ln, 300)  # security: pod-log text escaped
                     for ln in log.splitlines() if ln.strip()][-LOG_TAIL:]
            tail = "; last log lines: " + " | ".join(lines) if lines else "; its log is empty"
        except BridgeError:
            pass
        raise BridgeError(f"proxy pod {pname} failed to start: "  # security: escaped
                          f"{state.printable(reason, 300)}{tail}")

    async def _wait_proxy_ready(self, link: Link) -> str:
        """Until the proxy pod is Ready and every Service selecting it sends traffic to it
        (READY), the command exits (CHILD_EXITED: nothing to hand over to) or the tunnel
        closes (TUNNEL_CLOSED: the forwards are gone, the pod will never turn Ready)."""
        kube, pod_name = self._kube(), link.pod
        waiter = self.progress.waiting(f"proxy pod {pod_name} to become Ready")
        services: list[Obj] | None = None
        while True:
            if self._child_exited():
                waiter.done("the command exited; not handing over")
                return CHILD_EXITED
            if link.tunnel.is_closed():
                return TUNNEL_CLOSED
            pods = await kube.list_pods(f"{state.SESSION_LABEL}={self.session_id}")
            mine = [q for q in pods if target.name_of(q) == pod_name]
            if mine:
                await self._check_pod_failure(mine[0])
                gate = diagnose.pod_waiting(mine[0])  # [realbeh] e.g. a readiness gate
                if gate is not None and gate.line() != self.said_waiting:
                    self.said_waiting = gate.line()
                    self.progress.warn(f"proxy pod waiting: {gate.line()}")
                if restore._pod_ready(mine[0]):
                    if services is None:
                        services = await restore.services_selecting(kube, self.manifest)
                    # [realbeh] every address of the pod (podIPs: dual-stack, IPv6)
                    if await restore.endpoints_serve(kube, services,
                                                     endpoints.pod_ips(mine[0])):
                        waiter.done(f"proxy pod {pod_name} Ready ({waiter.elapsed():.1f}s)")
                        return READY
            waiter.tick()
            await anyio.sleep(POLL)

    async def _wait_drained(self, pod_name: str) -> None:
        """Until the Services send traffic to the proxy only (bounded; informational)."""
        kube = self._kube()
        services = await restore.services_selecting(kube, self.manifest)
        if not services:
            return
        pods = await kube.list_pods(f"{state.SESSION_LABEL}={self.session_id}")
        ips: set[str] = set()
        for q in pods:  # [realbeh] podIPs
            if target.name_of(q) == pod_name:
                ips |= endpoints.pod_ips(q)
        waiter = self.progress.waiting(f"the original pods of deployment/{self.name} to leave "
                                       "the Service endpoints")
        with anyio.move_on_after(self.opts.timeout):
            while not self._child_exited():  # then the restore starts at once
                try:
                    current = set()
                    for svc in services:  # [realbeh] EndpointSlices
                        current |= await kube.service_ready_ips(target.name_of(svc))
                except ApiError:
                    return  # not allowed to read Endpoints: nothing more to learn
                if current <= ips:
                    waiter.done()
                    return
                waiter.tick()
                await anyio.sleep(POLL)
            return  # the command exited
        self.progress.warn("the original pods are still in the Service endpoints after "
                           f"{self.opts.timeout:g}s")

    def _write_env_files(self, pod_env: dict[str, str],
                         bridge_env: dict[str, str] | None = None) -> None:
        o, p = self.opts, self.progress
        exported, held = envmod.hold_back(pod_env, o.env_allow)  # security: item 3
        exported.update(bridge_env or {})  # outbound's own variables are not the pod's
        if held:
            p.warn(envmod.held_back_line(held))
        self.env_file = o.env_file
        if not o.command and not o.env_file:  # [ide] attach mode: .bridge/NAME.env under cwd
            default = ide_envfile.default_env_file(Path.cwd(), self.name, o.env_syntax)  # [ide]
            ide_envfile.prepare_dir(default.parent)  # [ide] created 0700, git-ignored
            self.env_file = str(default)  # [ide]
            self.stack.push("removing the environment file",  # [ide]
                            _async(lambda: default.unlink(missing_ok=True)))  # [ide]
        if self.env_file:
            rendered = envsyntax.render(o.env_syntax, exported, held,  # [ide] + security
                                        service=self.name)  # [ide]
            ide_envfile.write_private(Path(self.env_file), rendered.text)  # [ide]
            p.info(f"wrote the pod's environment to {self.env_file}")
            if rendered.left_out:  # [ide]
                p.warn(f"left out of the env file ({o.env_syntax} syntax): " + ", ".join(  # [ide]
                    f"{k} ({why})" for k, why in sorted(rendered.left_out.items())))  # [ide]
        if o.env_json:
            envmod.write_json(o.env_json, exported)
            p.info(f"wrote the pod's environment to {o.env_json}")

    # -- running ----------------------------------------------------------------------------

    async def _start_child(self) -> None:
        from bridge import runner

        cmd = self.opts.command
        if self.outbound is not None:  # OUTBOUND(issue 10): under torsocks for inject
            cmd = self.outbound.wrap_argv(cmd)
        self.child = child = await runner.Child.start(cmd, self.child_env)

        async def stop() -> None:
            if child.returncode is None:
                self.progress.info(f"stopping the command (pid {child.pid}): SIGTERM, then "
                                   f"SIGKILL after {CHILD_GRACE:g}s")
            await child.terminate_tree(CHILD_GRACE)

        self.stack.push("stopping the command", stop)
        self.progress.info(f"started {' '.join(cmd)} (pid {child.pid})")

    async def _wait_child_listening(self) -> bool:
        """Until the command accepts connections on every local port (bounded by --timeout;
        then bridge hands over anyway). False when the command exited meanwhile."""
        child, p = self.child, self.progress
        waiting = [pm.local for pm in self.ports]
        waiter = p.waiting("the command to listen on " + ", ".join(
            f"127.0.0.1:{n}" for n in waiting))
        with anyio.move_on_after(self.opts.timeout):
            while waiting:
                if child.returncode is not None:
                    return False
                waiting = [n for n in waiting if not await _accepts(n)]
                if waiting:
                    waiter.tick()
                    await anyio.sleep(0.1)
            waiter.done()
            return True
        p.warn(f"the command does not listen on {', '.join(map(str, waiting))} after "
               f"{self.opts.timeout:g}s; handing the traffic over anyway")
        return True

    async def _hold(self) -> int:
        o, p = self.opts, self.progress
        if self.child is None:
            p.info(ide_envfile.attached_message(  # [ide] the line IDE tasks wait for
                [f"127.0.0.1:{pm.local}" for pm in self.ports], self.env_file))  # [ide]
            self.attach_mode_held = True
            while True:  # security: item 7, a listener of another user ends the swap
                await anyio.sleep(1.0)
                self._refuse_squatted_ports()
        if self.child.returncode is None:
            p.info(f"swapped: {' '.join(o.command)} gets the traffic; Ctrl-C ends the swap")
        code: int = await self.child.wait()
        p.info(f"command exited with code {code}")
        return code

    def _refuse_squatted_ports(self) -> None:
        """security: in attach mode, no other user of this machine may listen on a local port
        the cluster's requests go to (bridge.localports)."""
        from bridge import localports

        if self.child is None:
            why = localports.problem([pm.local for pm in self.ports])
            if why:
                raise BridgeError(why)

    async def _heartbeat(self) -> None:
        """Refresh the lock every interval; end the session once the lock is not ours."""
        failing = False
        while True:
            await anyio.sleep(self.opts.heartbeat_interval)
            try:
                await self._beat()
                if failing:
                    self.progress.info("heartbeat: the API server answers again")
                failing = False
            except NotOurs:
                raise
            except BridgeError as e:
                if not failing:
                    self.progress.warn(f"heartbeat failed ({e}); retrying")
                failing = True

    async def _beat_while_restoring(self) -> None:
        """The heartbeat goes on while the restore waits (the original may take longer to be
        Ready than the TTL), so nobody repairs this session under its feet; quietly."""
        while True:
            await anyio.sleep(self.opts.heartbeat_interval)
            try:
                await self._beat()
            except NotOurs:
                return
            except Exception:  # noqa: BLE001 - nothing here may cut the restore short
                pass

    async def _beat(self) -> None:
        """One heartbeat: only onto our own lock (the patch is conditional on what was read)."""
        kube = self._kube()
        for _ in range(3):
            dep = await self._check_still_ours()
            if self.drift_armed:  # [realbeh] KEDA/GitOps scaling the original back up
                drift = self.drift.observe(dep)
                if drift:
                    self.progress.warn(drift)
            rv = dep.get("metadata", {}).get("resourceVersion")
            try:
                await kube.patch_deployment(self.name, state.heartbeat_patch(now(), rv))
                return
            except ApiError as e:
                if e.status != 409:
                    raise
        # changed three times in a row under us: the next beat will do

    async def _watchdog(self) -> None:
        """Reconnect the tunnel whenever the connection to the proxy pod drops."""
        while True:
            assert self.link is not None
            await self.link.tunnel.wait_closed()
            self.progress.warn("connection to the proxy pod lost; reconnecting")
            self.reconnected = True
            old, self.link = self.link, None
            with anyio.CancelScope(shield=True):
                await old.close()
            delay = 0.5
            started = time.monotonic()
            while self.link is None:
                try:
                    with anyio.fail_after(max(self.opts.timeout, 10)):
                        self.link = await self._connect(first=False)
                    self.progress.info(
                        f"reconnected after {time.monotonic() - started:.1f}s")
                    if self.files is not None:  # files (issue 15): live mount on the new link
                        await self.files.reattach(self.link.tunnel.connection)
                except NotOurs:
                    raise
                except Exception as e:  # whatever broke this attempt, the next may work
                    await self._still_ours_unless_unsure()
                    why = str(e) or type(e).__name__
                    self.progress.warn(f"reconnecting failed ({why}); retrying in {delay:g}s")
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    async def _check_still_ours(self) -> Obj:
        """The Deployment, while this session holds its lock; NotOurs once someone else
        restored (or took) it or it was deleted. API trouble is raised as it is."""
        try:
            dep = await self._kube().get_deployment(self.name)
        except ApiError as e:
            if e.status != 404:
                raise
            raise NotOurs(f"deployment/{self.name} was deleted while swapped") from e
        lock = state.decode(_annotations(dep))
        if lock is None or self.lock is None or lock.session != self.lock.session:
            raise NotOurs(f"deployment/{self.name} was restored or taken over by someone "
                          "else (bridge restore?) while this session ran")
        return dep

    async def _still_ours_unless_unsure(self) -> None:
        """While reconnecting: NotOurs when the lock is gone, or the proxy Deployment is (no
        pod would ever come back, and the original stays at zero). API trouble is no answer,
        so no verdict."""
        try:
            await self._check_still_ours()
            assert self.lock is not None
            await self._kube().get_deployment(self.lock.proxy)
        except NotOurs:
            raise
        except ApiError as e:
            if e.status == 404 and self.lock is not None:
                raise NotOurs(f"proxy deployment/{self.lock.proxy} was deleted while "
                              "swapped (by someone else?)") from e
        except BridgeError:
            pass

    async def _close_link(self) -> None:
        if self.link is not None:
            link, self.link = self.link, None
            await link.close()


async def resolve_target(kube: Kube, text: str) -> tuple[Obj, list[Obj]]:
    """The Deployment TARGET names and the Services selecting its pods."""
    ref = target.parse_target(text)
    ns = kube.namespace
    deployment: Obj | None = None
    if ref.kind in ("deployment", None):
        try:
            deployment = await kube.get_deployment(ref.name)
        except ApiError as e:
            if e.status != 404 or isinstance(e, NamespaceNotFound):
                raise
            if ref.kind == "deployment":
                raise BridgeError(f'deployment "{ref.name}" not found in namespace "{ns}"; '
                                  "nothing was changed") from e
    if deployment is None:
        try:
            svc = await kube.get_service(ref.name)
        except ApiError as e:
            if e.status != 404 or isinstance(e, NamespaceNotFound):
                raise
            what = "service" if ref.kind == "service" else "deployment or service"
            raise BridgeError(f'no {what} named "{ref.name}" in namespace "{ns}"; '
                              "nothing was changed") from e
        # A swapped Deployment's proxy has the same pod labels: the Service selects it too,
        # but it is never what TARGET means (else `bridge restore svc/NAME` would be refused
        # as ambiguous exactly when it is needed).
        users = [d for d in await kube.list_deployments()
                 if (d.get("metadata", {}).get("labels") or {}).get(state.MANAGED_BY_LABEL)
                 != state.MANAGED_BY]
        deployment = dict(target.resolve_service(svc, users))
    services = await restore.services_selecting(kube, deployment)
    return deployment, services


def _files_mode(o: SwapOptions) -> tuple[str | None, str]:  # files (issue 15)
    """(mode, what to say) when the pod's files were asked for (--mount, --mount-mode,
    --mount-rw), else (None, ""). BridgeError for a bad --mount DIR or an impossible live
    mode: checked before anything changes."""
    from bridge import mounts

    if not (o.mount_dir or o.mount_mode or o.mount_rw):
        return None, ""
    problem = o.mount_dir and mounts.root_problem(o.mount_dir)
    if problem:
        raise BridgeError(f"{problem}; nothing was changed")
    return mounts.choose_mode(o.mount_mode or "auto", mounts.live_problem())


def must_end(sig: int, sigints: int) -> bool:
    """Whether the command, sent `sig`, gets only a bounded time to end: after SIGHUP (the
    terminal is gone), SIGTERM (whoever sent it SIGKILLs bridge next) or a second Ctrl-C. A
    first Ctrl-C is the command's own business (a debugger may use it)."""
    return sig in (signal.SIGHUP, signal.SIGTERM) or (sig == signal.SIGINT and sigints >= 2)


def final_message(msg: str, *, touched: bool, failed: bool) -> str:
    """The error line bridge ends with, saying what became of the cluster. A failed restore
    step wins over `touched`: whatever was believed untouched, something was left behind."""
    if any(said in msg for said in ("nothing was changed", "nothing else was changed",
                                    "left as it was")):
        return msg
    if failed:
        return msg + "; restoring was incomplete, see the messages above"
    if touched:
        return msg + "; the cluster was restored as it was"
    return msg + "; nothing was changed"


def output_path_problem(option: str, path: str) -> str | None:
    """Why `path` (given to `option`) cannot be written, or None. Checked before anything is
    changed, so a typo does not cost a whole swap and restore."""
    p = Path(path)
    parent = p.parent
    if p.is_dir():
        return f"{option} {path} is a directory"
    if not parent.is_dir():
        return f"{option} {path}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{option} {path}: directory {parent} is not writable"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{option} {path} is not writable"
    return None


async def _accepts(port: int) -> bool:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


def _annotations(obj: Obj) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("annotations") or {})


def pod_problem(pod: Obj, container: str, *, past: bool) -> str:
    """Why this proxy pod cannot serve (empty when nothing is wrong that we can see). With
    `past`, a container that terminated earlier (and was restarted) counts too: while the proxy
    starts, a sidecar that exited once will do it again. Without, only the present state
    counts: a sidecar that crashed, was restarted and now runs is fine."""
    st = pod.get("status") or {}
    reason = ""
    if st.get("phase") == "Failed":
        reason = f"failed: {st.get('reason') or ''} {st.get('message') or ''}".strip()
    for cond in st.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                and cond.get("reason") == "Unschedulable":
            reason = f"cannot be scheduled: {cond.get('message') or ''}".strip()
    for cs in st.get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        now_state = cs.get("state") or {}
        waiting = now_state.get("waiting") or {}
        term = now_state.get("terminated") or (
            (cs.get("lastState") or {}).get("terminated") if past else None)
        if waiting.get("reason") in _BAD_WAITING:
            reason = f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
        elif term:
            reason = (f"the sidecar exited with code {term.get('exitCode')}"
                      f" ({term.get('reason') or 'Error'})")
    return reason


def _container_running(pod: Obj, container: str) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return bool((cs.get("state") or {}).get("running"))
    return False


def _first_bridge_error(eg: BaseExceptionGroup) -> BridgeError | None:
    for e in eg.exceptions:
        if isinstance(e, BridgeError):
            return e
        if isinstance(e, BaseExceptionGroup):
            found = _first_bridge_error(e)
            if found is not None:
                return found
    return None


def _async(fn: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn()

    return run
