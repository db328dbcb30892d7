"""One swap session: the orchestrator of the phases (see lifecycle.py for the table).

    resolve (read only)      resolve.resolve        -> Resolved
    plan (pure)              plan.plan_proxy        -> the proxy manifest; Prepared (lock, key)
    lease                    lease.clear_the_way, Lease.take / heartbeat / release
    link                     link.Linker.connect    -> Link (port-forward + SSH)
    environment              tunnel.env()           -> dict; envout.child_environment / write_files
    hand-over                handover.HandOver.run  (command listens, proxy Ready, original 0)
    hold                     until the command exits or a signal asks to end
    hand-back                handback.hand_back     (original Ready, proxy out), then the command
    restore                  the cleanup stack      (command's tree, restore, tunnel, API)

This module owns the task groups, the cancel scope of the setup (handed to the signal watcher,
its only other user) and the cleanup stack; what happened to the cluster is an `Outcome`
record, from which the final message is built. Hook points for features: `Session.hooks`.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError, NothingChanged
from bridge.kube.client import Kube
from bridge.local import envout
from bridge.local import ports as localports
from bridge.local.ide import envfile as ide_envfile
from bridge.local.runner import Child
from bridge.local.signals import Control, watch_signals
from bridge.model import controllers, lifecycle, plan, resources, state
from bridge.model.lifecycle import Action, Phase
from bridge.model.outcome import Outcome, final_message
from bridge.progress import Progress
from bridge.swap import proofs
from bridge.swap.handback import hand_back
from bridge.swap.handover import HandOver, wait_listening
from bridge.swap.lease import Lease, NotOurs, clear_the_way, now
from bridge.swap.link import Link, Linker, LinkSpec
from bridge.swap.options import Asked, SwapOptions, default_owner, preflight
from bridge.swap.resolve import Resolved, resolve
from bridge.transport import outbound as outbound_mod
from bridge.transport import tunnel as tunnelmod
from sidecar import protocol

__all__ = ["NotOurs", "Session", "SwapOptions", "default_owner"]

SQUAT_CHECK = 1.0  # attach mode: how often the local ports are checked for another user's listener
CHILD_GRACE = 5.0  # SIGTERM -> SIGKILL when the cleanup stops the command's tree
END_GRACE = CHILD_GRACE  # after the command was signalled, how long it may take to end


@dataclass(frozen=True)
class Prepared:
    """The plan phase's output: pure data, fixed before anything is written."""

    session: str
    client_key: Any
    lock: state.Lock
    manifest: dict[str, Any]
    ssh_port: int
    files_skipped: tuple[str, ...] = ()  # the container's mounts not brought (--mount)


def prepare(r: Resolved, deployment: dict[str, Any], o: SwapOptions, asked: Asked,
            namespace: str, session: str, client_key: Any, started: Any,
            sidecar_resources: dict[str, Any] | None = None) -> Prepared:
    lock = state.Lock(
        session=session, owner=o.owner,
        replicas=int(deployment.get("spec", {}).get("replicas", 1)),
        proxy=plan.proxy_name(r.name, session),
        ports=",".join(pm.spec() for pm in r.ports), started_at=started)
    opts = plan.Options(
        container=r.container, ports=r.ports, session=session, owner=o.owner,
        authorized_key=tunnelmod.public_key_line(client_key), image=o.sidecar_image,
        allow_host_access=o.allow_host_access,
        direct_tcpip=asked.direct_tcpip,
        resources=sidecar_resources,
        files=asked.files_mode is not None, files_writable=o.mount_rw)
    manifest = plan.plan_proxy(deployment, opts)
    manifest["metadata"]["namespace"] = namespace
    skipped: tuple[str, ...] = ()
    if asked.files_mode is not None:
        pod_spec = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod_spec["containers"] if c.get("name") == r.container)
        skipped = tuple(plan.files_plan(pod_spec, container, opts).skipped)
    return Prepared(session, client_key, lock, manifest,
                    plan.ssh_port_of(manifest, r.container), skipped)


@dataclass
class Swap:
    """The phases' outputs as the session goes; each later phase takes its inputs from here.

    kube       the API connection (kube.Api)           from _api
    resolved   Deployment, Services, container, ports  from resolve (read only)
    prepared   session id, client key, lock, manifest  from the plan (pure)
    lease      the lock, heartbeat, scaling            from the lease
    linker     the link (linker.current: a Link)       from the link phase
    pod_env    the pod's environment (dict)            read over the first link
    env_file   where the dotenv file was written       (attach mode at least)
    """

    kube: Kube
    resolved: Resolved
    prepared: Prepared
    lease: Lease
    linker: Linker
    pod_env: dict[str, str] = field(default_factory=dict)
    own_env: dict[str, str] = field(default_factory=dict)  # bridge's own (BRIDGE_ROOT...)
    env_file: str | None = None


@dataclass
class Hooks:
    """Where features plug in (each runs in the session's task group, in this order):

    on_link      every new Link (first connect and each reconnect), before it is used
    on_env       the pod's environment as read (dict, mutable) before anything uses it
    on_command   (argv, env) of the command, before it starts; return the (argv, env) to run
    """

    on_link: list[Callable[[Link], Awaitable[None]]] = field(default_factory=list)
    on_env: list[Callable[[dict[str, str]], Awaitable[None]]] = field(default_factory=list)
    on_command: list[Callable[[list[str], dict[str, str]],
                              Awaitable[tuple[list[str], dict[str, str]]]]] = field(
        default_factory=list)


async def first_of(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Return as soon as one of `waits` returns."""
    async with anyio.create_task_group() as tg:
        async def one(w: Callable[[], Awaitable[Any]]) -> None:
            await w()
            tg.cancel_scope.cancel()

        for w in waits:
            tg.start_soon(one, w)


class Session:
    def __init__(self, opts: SwapOptions, progress: Progress) -> None:
        self.opts = opts
        self.progress = progress
        self.stack = CleanupStack(progress)
        self.outcome = Outcome()
        self.control = Control()
        self.hooks = Hooks()
        self.asked: Asked | None = None

    async def run(self) -> int:
        """Run the session; the exit code bridge should end with. Raises BridgeError on failure
        after the cleanup ran (its message says what became of the cluster)."""
        code = 1
        error: BridgeError | None = None
        setup = anyio.CancelScope()
        async with anyio.create_task_group() as outer:
            await outer.start(watch_signals, self.control, setup, self.progress)
            try:
                with setup:
                    code = await self._body()
                if setup.cancelled_caught and self.control.ended_by is not None:
                    code = 128 + self.control.ended_by
            except BridgeError as e:
                error = e
            except BaseExceptionGroup as eg:
                error = first_bridge_error(eg)
                if error is None:
                    raise
            finally:
                self.control.phase = Phase.RESTORE
                with anyio.CancelScope(shield=True):
                    await self.stack.unwind()
                outer.cancel_scope.cancel()
        self.outcome.failed_steps += self.stack.failures
        if error is not None:
            raise BridgeError(final_message(error, self.outcome), exit_code=error.exit_code)
        if self.outcome.failed:
            self.progress.error("restoring was incomplete, see the messages above")
            return code or 1
        return code

    async def _body(self) -> int:
        """The phases in order; each one's output is a field of `Swap`."""
        kube = await self._api()
        self._profile("connect", kube)
        swap = await self._lease(kube)
        self._profile("resolve+lease", kube)
        async with anyio.create_task_group() as tg:
            tg.start_soon(swap.lease.heartbeat, self.opts.heartbeat_interval)
            await self._link(swap)
            self._profile("link", kube)
            await self._hand_over(swap)
            self._profile("hand-over", kube)
            tg.start_soon(swap.linker.watch)
            code = await self._hold(swap)
            tg.cancel_scope.cancel()
        return code

    def _profile(self, phase: str, kube: Kube) -> None:
        """A timing hook (the log file stamps it): `make bench` profiles a swap from these."""
        self.progress.detail(f"profile: {phase} done; {kube.requests} API requests so far")

    async def _api(self) -> Kube:
        o = self.opts
        for option, path in (("--env-file", o.env_file), ("--env-json", o.env_json)):
            problem = path and envout.output_path_problem(option, path)
            if problem:
                raise NothingChanged(f"{problem}; nothing was changed")
        self.asked = asked = preflight(o)  # outbound, --forward, --mount: before any change
        for hint in asked.hints:
            self.progress.warn(hint)
        kube = await Kube.connect(o.kubeconfig, o.context, o.namespace)
        self.stack.push("closing the API connection", kube.close)
        self.progress.detail(f"context {kube.context}, namespace {kube.namespace}, "
                             f"API {kube.host}")
        return kube

    async def _lease(self, kube: Kube) -> Swap:
        """Resolve (read only), clear the way (a stale session is restored), plan, take the
        lock (its undo pushed first)."""
        o, p, asked = self.opts, self.progress, self._asked()
        r = await resolve(kube, o.target, o.container, o.ports)
        # controllers that would undo the swap (KEDA, HPA, GitOps): said before any change
        fighting = controllers.findings(r.deployment, await kube.list_scaled_objects())
        for finding in fighting:
            p.warn(finding.line())
        deployment = await clear_the_way(kube, r.deployment, ttl=o.heartbeat_ttl,
                                         bound=o.timeout, progress=p, outcome=self.outcome)
        prep = prepare(r, deployment, o, asked, kube.namespace, secrets.token_hex(4),
                       tunnelmod.new_client_key(), now(),
                       resources.sidecar_resources(await kube.list_limit_ranges()))
        for skipped in prep.files_skipped:
            p.warn(f"not bringing the pod's files at {skipped}")
        admitted, not_admitted = await proofs.admitted_by(kube, deployment)  # a mesh's
        if admitted.summary():
            p.detail(f"the proxy pod may carry what admission added to deployment/{r.name}'s "
                     f"own pods: {admitted.summary()}")
        lease = Lease(kube, r.name, prep.lock, p,
                      drift=controllers.DriftWatch(known=fighting))

        async def restore_step() -> None:
            out = await lease.release(wait=o.wait, bound=o.timeout,
                                      heartbeat_interval=o.heartbeat_interval)
            self.outcome.restored = out.ok

        await lease.take(deployment, outcome=self.outcome, stack=self.stack,
                         restore_step=restore_step)
        p.info(f"swapping deployment/{r.name} (container {r.container}, ports "
               f"{prep.lock.ports}) in namespace {kube.namespace}, session {prep.session}")
        linker = Linker(
            kube, lambda pod: _port_forwarder(kube, pod),
            LinkSpec(prep.session, r.container, prep.ssh_port, prep.client_key, r.ports,
                     o.keepalive_interval, proxy=prep.lock.proxy,
                     planned_spec=prep.manifest["spec"]["template"]["spec"],
                     planned_meta=prep.manifest["spec"]["template"].get("metadata") or {}),
            p, lease.still_ours_unless_unsure, timeout=o.timeout, on_connect=self.hooks.on_link,
            admitted=admitted, admitted_note=not_admitted)
        self.stack.push("closing the tunnel", linker.close)
        return Swap(kube, r, prep, lease, linker)

    def _asked(self) -> Asked:
        assert self.asked is not None
        return self.asked

    async def _link(self, swap: Swap) -> None:
        """The proxy Deployment, the first link (no forwards yet), the pod's environment (and
        the pod's files, the outbound proxy), written where asked."""
        o, p = self.opts, self.progress
        created = await swap.kube.create_deployment(swap.prepared.manifest)
        # the pods trusted are those of the Deployment created here (its UID)
        swap.linker.proxy_uid = str((created.get("metadata") or {}).get("uid") or "")
        swap.lease.proxy_uid = swap.linker.proxy_uid  # from now on the heartbeat goes there
        proxy = swap.prepared.lock.proxy
        p.info(f"created proxy deployment/{proxy}")
        try:
            with anyio.fail_after(o.timeout):
                link = await swap.linker.connect(first=True, forward=False)
        except TimeoutError:
            raise BridgeError(f"timed out after {o.timeout:g}s waiting for the proxy pod of "
                              f"deployment/{proxy} to start") from None
        swap.pod_env = await link.tunnel.env()
        for on_env in self.hooks.on_env:
            await on_env(swap.pod_env)
        if self._asked().files_mode is not None:  # bridge's own variable, never filtered
            swap.own_env[protocol.ENV_ROOT] = await self._provide_files(swap, link)
        ob = await self._start_outbound(swap)
        file_env = dict(swap.own_env)
        if not o.command:  # outbound's own variables join after the pod's are filtered
            file_env.update({**ob.forward_env(swap.pod_env), **ob.attach_env()})
        swap.env_file = envout.write_files(
            swap.pod_env, own=file_env, allow=o.env_allow, syntax=o.env_syntax,
            env_file=o.env_file, env_json=o.env_json, attach=not o.command,
            stem=swap.resolved.name, stack=self.stack, progress=p)
        if not o.command and swap.env_file and ob.attach_hint(swap.env_file, o.env_syntax):
            p.info(ob.attach_hint(swap.env_file, o.env_syntax))

    async def _provide_files(self, swap: Swap, link: Link) -> str:
        """The pod's files under a directory (copied or mounted live), removed at the end; a
        live mount is made again on every new link. The directory is returned."""
        from bridge.local import mounts

        o, asked = self.opts, self._asked()
        assert asked.files_mode is not None
        self.progress.info(asked.files_note)
        if o.mount_rw and asked.files_mode == "copy":
            self.progress.warn("--mount-rw: in copy mode, writes stay in the local copy")
        files = mounts.Files(
            link.tunnel.connection, asked.files_mode, o.mount_dir, writable=o.mount_rw,
            progress=self.progress, session=swap.prepared.session,
            copy_limit=mounts.COPY_LIMIT)
        self.stack.push("removing the pod's files", files.close)
        root = await files.start()

        async def reattach(new: Link) -> None:
            await files.reattach(new.tunnel.connection)

        self.hooks.on_link.append(reattach)
        return root

    async def _start_outbound(self, swap: Swap) -> outbound_mod.Outbound:
        """The command's connections go out from the pod (over the current link's SSH
        connection); the command runs under it (on_command)."""
        asked, linker = self._asked(), swap.linker
        ob = await outbound_mod.start(
            lambda: linker.current.tunnel.connection if linker.current else None,
            asked.outbound, asked.forwards)
        self.stack.push("stopping the outbound proxy", ob.close)
        if ob.describe():
            self.progress.info(ob.describe())

        async def wrap(argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
            return ob.wrap_argv(argv), ob.child_env(env)

        self.hooks.on_command.append(wrap)
        return ob

    async def _hand_over(self, swap: Swap) -> None:
        """The command (if any) starts and listens; then the hand-over proper."""
        o, c = self.opts, self.control
        c.phase = Phase.HAND_OVER
        if o.command:
            await self._start_child(envout.child_environment(
                swap.pod_env, swap.prepared.session, allow=o.env_allow, own=swap.own_env))
        else:
            refuse_squatters(swap.resolved.ports)  # before any request comes this way
        handover = HandOver(swap.kube, swap.linker, swap.lease, swap.prepared.manifest,
                            self.progress, o.timeout,
                            stop=lambda: c.end.is_set() or _exited(c.child))
        if c.child is None or await wait_listening(
                [pm.local for pm in swap.resolved.ports], o.timeout, self.progress,
                handover.stop):
            await handover.run()

    async def _start_child(self, env: dict[str, str]) -> None:
        argv = list(self.opts.command)
        for on_command in self.hooks.on_command:
            argv, env = await on_command(argv, env)
        self.control.child = child = await Child.start(argv, env)

        async def stop() -> None:
            if child.returncode is None:
                self.progress.info(f"stopping the command (pid {child.pid}): SIGTERM, then "
                                   f"SIGKILL after {CHILD_GRACE:g}s")
            await child.terminate_tree(CHILD_GRACE)

        self.stack.push("stopping the command", stop)
        self.progress.info(f"started {' '.join(argv)} (pid {child.pid})")

    async def _hold(self, swap: Swap) -> int:
        """Hold until the command exits or a signal asks to end; then hand back."""
        c, p, o = self.control, self.progress, self.opts
        child = c.child
        if not c.end.is_set() and not _exited(child):
            c.phase = Phase.HOLD
            if child is None:
                p.info(ide_envfile.attached_message(  # the line IDE tasks wait for
                    [f"127.0.0.1:{pm.local}" for pm in swap.resolved.ports], swap.env_file))

                async def watch_squatters() -> None:
                    while True:
                        await anyio.sleep(SQUAT_CHECK)
                        refuse_squatters(swap.resolved.ports)

                await first_of(c.end.wait, watch_squatters)
            else:
                p.info(f"swapped: {' '.join(o.command)} gets the traffic; Ctrl-C ends the swap")
                await first_of(c.end.wait, child.wait)
        if child is not None and child.returncode is not None and not c.end.is_set():
            if lifecycle.action(c.phase, lifecycle.Event.CHILD_EXIT) in (
                    Action.WITHDRAW, Action.KEEP_ORIGINAL):
                await swap.linker.withdraw()  # no endpoint that accepts and drops
            p.info(f"command exited with code {child.returncode}")
            return child.returncode
        c.phase = Phase.HAND_BACK
        p.info(lifecycle.HAND_BACK_LINE if c.child_running()
               else "handing traffic back to the cluster")
        await hand_back(swap.kube, swap.lease, swap.linker, swap.prepared.manifest, p, o.timeout)
        if child is None:
            return 0
        return await self._stop_command(child)

    async def _stop_command(self, child: Child) -> int:
        c, p = self.control, self.progress
        c.phase = Phase.STOPPING
        sig = c.ended_by or signal.SIGTERM
        name = signal.Signals(sig).name
        if child.returncode is None and not c.stopped_now:
            p.info(f"{name}: passing it to the command")
            child.send_signal(sig)
            with anyio.move_on_after(END_GRACE):
                await child.wait()
            if child.returncode is None:
                why = " (the terminal is gone)" if sig == signal.SIGHUP else ""
                p.warn(f"the command still runs {END_GRACE:g}s after {name}{why}; stopping "
                       "it and restoring the cluster")
                return 128 + sig  # the cleanup stack stops its tree
        code = await child.wait()
        if c.stopped_now:
            return 128 + sig
        p.info(f"command exited with code {code}")
        return code


def refuse_squatters(ports: list[Any]) -> None:
    """Attach mode: no other user of this machine may listen on a local port the cluster's
    requests go to (bridge.local.ports); BridgeError ends the session."""
    why = localports.problem([pm.local for pm in ports])
    if why:
        raise BridgeError(why)


def _exited(child: Child | None) -> bool:
    return child is not None and child.returncode is not None


def _port_forwarder(kube: Kube, pod: str) -> Any:
    from bridge.transport import portforward

    return portforward.PortForwarder(kube.api_client, kube.namespace, pod)


def first_bridge_error(eg: BaseExceptionGroup) -> BridgeError | None:
    for e in eg.exceptions:
        if isinstance(e, BridgeError):
            return e
        if isinstance(e, BaseExceptionGroup):
            found = first_bridge_error(e)
            if found is not None:
                return found
    return None
