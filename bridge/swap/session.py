"""One swap session: the orchestrator of the phases (see lifecycle.py for the table).

    (request)                request.build          -> SwapRequest (checked before Session)
    api                      Kube.connect           -> Kube
    resolve (read only)      resolve.resolve        -> Resolved; controllers, local ports said
    clear the way            lease.clear_the_way    -> the Deployment (a stale session restored)
    plan (pure)              plan.plan_proxy        -> the proxy manifest; Prepared (lock, key)
    lease                    Lease.take / heartbeat / release
    link                     link.Linker.connect    -> Link (port-forward + SSH)
    environment              tunnel.env()           -> dict; envout.child_environment / write_files
    hand-over                handover.HandOver.run  (command listens, proxy Ready, original 0)
    hold                     until the command exits or a signal asks to end
    hand-back                handback.hand_back     (original Ready, proxy out), then the command
    restore                  the cleanup stack      (command's tree, restore, tunnel, API)

The laptop's end is a `CommandEnd` or an `AttachEnd` (ends.py), chosen once from the request.
This module owns the task groups, the cancel scope of the setup (handed to the signal watcher,
its only other user) and the cleanup stack; phase changes go through `Control.enter` (checked
against lifecycle.NEXT); what happened to the cluster is an `Outcome` record, from which the
final message is built. Hook points for features: `Session.hooks`.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError
from bridge.kube.client import Kube, Obj
from bridge.local import envout
from bridge.local.signals import Control, watch_signals
from bridge.model import controllers, lifecycle, plan, resources, state, trust
from bridge.model.lifecycle import Action, Phase
from bridge.model.outcome import Outcome, final_message
from bridge.progress import Progress
from bridge.swap import ends, proofs
from bridge.swap.ends import End, first_of
from bridge.swap.handback import hand_back
from bridge.swap.handover import HandOver
from bridge.swap.lease import Lease, NotOurs, clear_the_way, now
from bridge.swap.link import Link, Linker, LinkSpec
from bridge.swap.options import SwapOptions, default_owner
from bridge.swap.request import SwapRequest
from bridge.swap.resolve import Resolved, resolve_with
from bridge.swap.together import at_once
from bridge.transport import outbound as outbound_mod
from bridge.transport import tunnel as tunnelmod
from sidecar import protocol

__all__ = ["NotOurs", "Session", "SwapOptions", "SwapRequest", "default_owner", "first_of"]


@dataclass(frozen=True)
class Prepared:
    """The plan phase's output: pure data, fixed before anything is written."""

    session: str
    client_key: Any
    lock: state.Lock
    manifest: dict[str, Any]
    ssh_port: int
    files_skipped: tuple[str, ...] = ()  # the container's mounts not brought (--mount)


def prepare(r: Resolved, deployment: dict[str, Any], req: SwapRequest, namespace: str,
            session: str, client_key: Any, started: Any,
            sidecar_resources: dict[str, Any] | None = None) -> Prepared:
    o = req.options
    lock = state.Lock(
        session=session, owner=o.owner,
        replicas=int(deployment.get("spec", {}).get("replicas", 1)),
        proxy=plan.proxy_name(r.name, session),
        ports=",".join(pm.spec() for pm in r.ports), started_at=started)
    opts = plan.Options(
        container=r.container, ports=r.ports, session=session, owner=o.owner,
        authorized_key=tunnelmod.public_key_line(client_key), image=o.sidecar_image,
        allow_host_access=o.allow_host_access,
        direct_tcpip=req.direct_tcpip,
        resources=sidecar_resources,
        files=req.files_mode is not None, files_writable=o.mount_rw)
    manifest = plan.plan_proxy(deployment, opts)
    manifest["metadata"]["namespace"] = namespace
    skipped: tuple[str, ...] = ()
    if req.files_mode is not None:
        pod_spec = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod_spec["containers"] if c.get("name") == r.container)
        skipped = tuple(plan.files_plan(pod_spec, container, opts).skipped)
    return Prepared(session, client_key, lock, manifest,
                    plan.ssh_port_of(manifest, r.container), skipped)


@dataclass
class Swap:
    """The phases' outputs as the session goes; each later phase takes its inputs from here.

    kube       the API connection (kube.Api)           from _api
    resolved   Deployment, Services, container, ports  from _resolve (read only)
    prepared   session id, client key, lock, manifest  from _plan (pure)
    lease      the lock, heartbeat, scaling            from _lease
    linker     the link (linker.current: a Link)       from _link
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

    @property
    def session_id(self) -> str:
        return self.prepared.session

    @property
    def local_ports(self) -> list[int]:
        return [pm.local for pm in self.resolved.ports]


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


class Session:
    def __init__(self, request: SwapRequest, progress: Progress) -> None:
        self.request = request
        self.opts = request.options
        self.progress = progress
        self.stack = CleanupStack(progress)
        self.outcome = Outcome()
        self.control = Control()
        self.hooks = Hooks()
        self.end: End = ends.choose(request, self.control, progress, self.stack,
                                    self.hooks.on_command)

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
                self.control.enter(Phase.RESTORE)
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
        """The phases in order (the module's table); each one's output is a field of `Swap`."""
        kube = await self._api()
        self._profile("connect", kube)
        r, fighting, limits = await self._resolve(kube)
        deployment = await self._clear_the_way(kube, r)
        prep = self._plan(kube, r, deployment, limits)
        self._profile("resolve", kube)
        lease, admitted = await self._lease_and_admitted(kube, r, prep, deployment, fighting)
        self._profile("lease", kube)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lease.heartbeat, self.opts.heartbeat_interval)
            swap = await self._link(kube, r, prep, lease, admitted)
            self._profile("link", kube)
            await self._hand_over(swap)
            self._profile("hand-over", kube)
            tg.start_soon(swap.linker.watch)
            code = await self._hold(swap)
            tg.cancel_scope.cancel()
        return code

    def _profile(self, phase: str, kube: Kube) -> None:
        """A timing hook (the log file stamps it): `make bench` profiles a swap from these."""
        self.progress.detail(f"profile: {phase} done; {kube.requests} API requests so far "
                             f"({kube.serial} serial)")

    async def _api(self) -> Kube:
        """The API connection (the request was checked before the session started)."""
        o = self.opts
        for hint in self.request.hints:
            self.progress.warn(hint)
        kube = await Kube.connect(o.kubeconfig, o.context, o.namespace)
        self.stack.push("closing the API connection", kube.close)
        self.progress.detail(f"context {kube.context}, namespace {kube.namespace}, "
                             f"API {kube.host}")
        return kube

    async def _resolve(self, kube: Kube) -> tuple[Resolved, list[controllers.Finding],
                                                  dict[str, Any] | None]:
        """Read only (one round trip): the Deployment, its Services, the container and
        ports, the namespace's ScaledObjects and LimitRanges; the controllers that would undo
        the swap and the local ports' listeners are said (or refused) here, before any
        change. Also the sidecar's resources (from the LimitRanges)."""
        o = self.opts
        r, scaled, limit_ranges = await resolve_with(kube, o.target, o.container, o.ports)
        self.end.check_ports([pm.local for pm in r.ports])
        fighting = controllers.findings(r.deployment, scaled)
        for finding in fighting:
            self.progress.warn(finding.line())
        return r, fighting, resources.sidecar_resources(limit_ranges)

    async def _clear_the_way(self, kube: Kube, r: Resolved) -> Obj:
        """A stale session on the Deployment is restored (a live one refuses the swap)."""
        o = self.opts
        return await clear_the_way(kube, r.deployment, ttl=o.heartbeat_ttl, bound=o.timeout,
                                   progress=self.progress, outcome=self.outcome)

    def _plan(self, kube: Kube, r: Resolved, deployment: Obj,
              sidecar_resources: dict[str, Any] | None) -> Prepared:
        """Pure: the session id, the client key, the lock and the proxy manifest."""
        prep = prepare(r, dict(deployment), self.request, kube.namespace, secrets.token_hex(4),
                       tunnelmod.new_client_key(), now(), sidecar_resources)
        for skipped in prep.files_skipped:
            self.progress.warn(f"not bringing the pod's files at {skipped}")
        return prep

    async def _lease_and_admitted(self, kube: Kube, r: Resolved, prep: Prepared,
                                  deployment: Obj, fighting: list[controllers.Finding],
                                  ) -> tuple[Lease, tuple[trust.Admitted, str]]:
        """The lock's write and the reads of what admission added to the original's pods, at
        once (one round trip): the lock changes no pod (the original runs until the
        hand-over), and what was admitted is needed only once the proxy pod is there. A
        refused lock cancels the reads."""
        lease, [admitted] = await at_once(
            lambda: self._lease(kube, r, prep, deployment, fighting),
            lambda: self._admitted(kube, r, deployment))
        return lease, admitted

    async def _admitted(self, kube: Kube, r: Resolved,
                        deployment: Obj) -> tuple[trust.Admitted, str]:
        """Read only: what admission (a mesh's injector) added to the original's own pods,
        which the proxy pod may then carry too (proofs.admitted_by); and why nothing is, when
        that is so."""
        admitted, not_admitted = await proofs.admitted_by(kube, deployment)
        if admitted.summary():
            self.progress.detail(f"the proxy pod may carry what admission added to "
                                 f"deployment/{r.name}'s own pods: {admitted.summary()}")
        return admitted, not_admitted

    async def _lease(self, kube: Kube, r: Resolved, prep: Prepared, deployment: Obj,
                     fighting: list[controllers.Finding]) -> Lease:
        """Take the lock (its undo, the restore, pushed first)."""
        o, p = self.opts, self.progress
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
        return lease

    async def _link(self, kube: Kube, r: Resolved, prep: Prepared, lease: Lease,
                    admitted: tuple[trust.Admitted, str]) -> Swap:
        """The proxy Deployment, the first link (no forwards yet), the pod's environment (and
        the pod's files, the outbound proxy), written where asked."""
        o, p = self.opts, self.progress
        created = await kube.create_deployment(prep.manifest)
        # the pods trusted are those of the Deployment created here (its UID)
        proxy_uid = str((created.get("metadata") or {}).get("uid") or "")
        lease.proxy_uid = proxy_uid  # from now on the heartbeat goes there
        linker = Linker(
            kube, lambda pod: _port_forwarder(kube, pod),
            LinkSpec(prep.session, r.container, prep.ssh_port, prep.client_key, r.ports,
                     o.keepalive_interval, proxy=prep.lock.proxy,
                     planned_spec=prep.manifest["spec"]["template"]["spec"],
                     planned_meta=prep.manifest["spec"]["template"].get("metadata") or {}),
            p, lease.still_ours_unless_unsure, timeout=o.timeout, on_connect=self.hooks.on_link,
            proxy_uid=proxy_uid, admitted=admitted[0], admitted_note=admitted[1],
            on_foreign=self.end.foreign)
        self.stack.push("closing the tunnel", linker.close)
        swap = Swap(kube, r, prep, lease, linker)
        p.info(f"created proxy deployment/{prep.lock.proxy}")
        try:
            with anyio.fail_after(o.timeout):
                link = await linker.connect(first=True, forward=False, read_env=True)
        except TimeoutError:
            raise BridgeError(f"timed out after {o.timeout:g}s waiting for the proxy pod of "
                              f"deployment/{prep.lock.proxy} to start") from None
        self._profile("tunnel", kube)
        # read beside the sidecar's version as the link came up (one round trip, not two)
        swap.pod_env = link.env if link.env is not None else await link.tunnel.env()
        for on_env in self.hooks.on_env:
            await on_env(swap.pod_env)
        if self.request.files_mode is not None:  # bridge's own variable, never filtered
            swap.own_env[protocol.ENV_ROOT] = await self._provide_files(swap, link)
        ob = await self._start_outbound(swap)
        swap.env_file = envout.write_files(
            swap.pod_env, own={**swap.own_env, **self.end.file_env(ob, swap.pod_env)},
            allow=o.env_allow, syntax=o.env_syntax, env_file=o.env_file, env_json=o.env_json,
            attach=self.end.attach, stem=r.name, stack=self.stack, progress=p)
        self.end.env_written(ob, swap.env_file)
        return swap

    async def _provide_files(self, swap: Swap, link: Link) -> str:
        """The pod's files under a directory (copied or mounted live), removed at the end; a
        live mount is made again on every new link. The directory is returned."""
        from bridge.local import mounts

        o, req = self.opts, self.request
        assert req.files_mode is not None
        self.progress.info(req.files_note)
        if o.mount_rw and req.files_mode == "copy":
            self.progress.warn("--mount-rw: in copy mode, writes stay in the local copy")
        files = mounts.open_files(
            link.tunnel.connection, req.files_mode, o.mount_dir, writable=o.mount_rw,
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
        req, linker = self.request, swap.linker
        ob = await outbound_mod.start(
            lambda: linker.current.tunnel.connection if linker.current else None,
            req.outbound, req.forwards)
        self.stack.push("stopping the outbound proxy", ob.close)
        if ob.describe():
            self.progress.info(ob.describe())

        async def wrap(argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
            return ob.wrap_argv(argv), ob.child_env(env)

        self.hooks.on_command.append(wrap)
        return ob

    async def _hand_over(self, swap: Swap) -> None:
        """The command (if any) starts and listens; then the hand-over proper, forwarding to
        the address the command listens on."""
        c, end = self.control, self.end
        c.enter(Phase.HAND_OVER)
        await end.start(swap)
        handover = HandOver(swap.kube, swap.linker, swap.lease, swap.prepared.manifest,
                            self.progress, self.opts.timeout,
                            stop=lambda: c.end.is_set() or end.gone())
        hosts = await end.listening(swap, handover.stop)
        if hosts is not None:
            swap.linker.local_hosts.update(hosts)
            await handover.run()

    async def _hold(self, swap: Swap) -> int:
        """Hold until the command exits or a signal asks to end; then hand back."""
        c, p, end = self.control, self.progress, self.end
        if not c.end.is_set() and not end.gone():
            c.enter(Phase.HOLD)
            await end.hold(swap)
        if end.gone() and not c.end.is_set():
            if lifecycle.action(c.phase, lifecycle.Event.CHILD_EXIT) in (
                    Action.WITHDRAW, Action.KEEP_ORIGINAL):
                await swap.linker.withdraw()  # no endpoint that accepts and drops
            p.info(f"command exited with code {end.exit_code()}")
            return end.exit_code()
        c.enter(Phase.HAND_BACK)
        p.info(lifecycle.HAND_BACK_LINE if c.child_running()
               else "handing traffic back to the cluster")
        await hand_back(swap.kube, swap.lease, swap.linker, swap.prepared.manifest, p,
                        self.opts.timeout)
        return await end.finish()


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
