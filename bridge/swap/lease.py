"""The lease phase: the lock on the original Deployment, the heartbeat on the proxy Deployment,
scaling the original, and the question every step that writes asks first: is the Deployment
still ours?

In: the resolved Deployment and the session's `state.Lock`. Out: a `Lease`, whose `release`
is the restore. The lock is written on the original once (`take`) and removed by the restore;
in between the session only reads the original (and scales it, through
`conditional.patch_when`, so no write lands on a lock that is not, or no longer, this
session's). The heartbeat is a sequence number on the session's own proxy Deployment.

Also the observer's edge: `watch_sessions` looks at other sessions' heartbeats on this
machine's monotonic clock until `state.liveness` has a verdict (no clocks compared), except for
a session whose bridge ran on this machine and is gone (`localstate`): dead at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import psutil

from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError
from bridge.kube import conditional
from bridge.kube.client import Api, ApiError, NotFound, Obj, Unreachable
from bridge.local import records as localstate
from bridge.model import controllers, plan, state, trust
from bridge.model.outcome import Outcome
from bridge.progress import Progress, Waiter
from bridge.swap import restore
from bridge.swap.options import default_owner

LOOKS_PER_TTL = 20  # an observer looks at a heartbeat this often per TTL (at most once a second)


class NotOurs(BridgeError):
    """The session cannot go on: the Deployment is no longer locked by it (restored, taken,
    deleted), or its proxy Deployment is gone."""


class ProxyGone(Exception):
    """The session's proxy Deployment is not there to carry a heartbeat."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("annotations") or {})


def look_every(ttl: float) -> float:
    """How often an observer looks at a heartbeat: often enough to see a beat soon after it
    happens, seldom enough not to load the API server (once a second for the default TTL)."""
    return min(1.0, max(ttl / LOOKS_PER_TTL, 0.05))


async def heartbeat_of(api: Api, original: Obj, lock: state.Lock) -> str | None:
    """What an observer compares from one look to the next: the heartbeat on the proxy
    Deployment of `lock`'s session (None when there is no such Deployment, not yet or no more,
    or it is not provably that session's proxy: then what it carries says nothing), and, for
    a session of an earlier bridge, the heartbeat it still writes into its lock on the
    original. Only equality matters: no time in it is compared with a clock."""
    meta = original.get("metadata") or {}
    name = str(meta.get("name"))
    legacy: str | None = None
    try:
        now_original = await api.get_deployment(name)
        annotations = annotations_of(now_original)
        found = state.decode(annotations)
        if found is not None and found.session == lock.session:
            legacy = annotations.get(state.HEARTBEAT)
        else:
            legacy = "unlocked" if found is None else f"taken by {found.session}"
    except NotFound:
        legacy = "deleted"
    beat: str | None = None
    try:
        proxy = await api.get_deployment(lock.proxy)
        if not trust.proxy_deployment_problems(proxy, name, lock.session, meta.get("uid")):
            beat = state.beat_of(annotations_of(proxy))
    except NotFound:
        pass
    if beat is None and legacy is None:
        return None
    return f"{beat or '-'} {state.printable(legacy or '-', 80)}"


def running_here(session: str, namespace: str, deployment: str) -> state.Running | None:
    """The user's own bridge on this machine that holds `session` (its record, its process
    running now), or None."""
    record = localstate.alive_here(session, namespace, deployment)
    if record is None:
        return None
    try:
        terminal = psutil.Process(record.pid).terminal()
    except psutil.Error:
        terminal = None
    started = dt.datetime.fromtimestamp(record.started).astimezone()  # local time, shown only
    return state.Running(0.0, record.pid, terminal, started)


async def watch_sessions(api: Api, locked: Mapping[str, tuple[Obj, state.Lock]], *,
                         ttl: float, progress: Progress, limit: float | None = None,
                         ) -> dict[str, state.Liveness]:
    """Watch the heartbeats of the sessions holding these Deployments (name -> (Deployment,
    lock)) on this machine's monotonic clock, until each is seen alive (its heartbeat changed)
    or stale (unchanged for `ttl`), or `limit` seconds passed (then `state.Watching`). A session
    whose bridge runs on this machine as this user (its record here, and the owner this bridge
    would write: not another person sharing the account with BRIDGE_OWNER) is `state.Running`
    unwatched, one whose bridge ran here and is no longer running `state.Ended`."""
    bound = ttl if limit is None else min(limit, ttl)
    verdicts: dict[str, state.Liveness] = {}
    for name, (_dep, lk) in locked.items():
        mine = running_here(lk.session, api.namespace, name) \
            if lk.owner == default_owner() else None
        if mine is not None:  # this user's own bridge here holds it: alive, nothing to watch
            verdicts[name] = mine
            continue
        pid = localstate.ended(lk.session, api.namespace, name)
        if pid is not None:  # its bridge ran here and is gone: nothing to watch
            verdicts[name] = state.Ended(pid)
            continue
        progress.info(f"deployment/{name} is locked by {lk.owner} (session {lk.session}); "
                      f"checking whether that session is alive (up to {bound:g}s)")
    seen: dict[str, list[state.Seen]] = {name: [] for name in locked}
    waiter = Waiter(progress, "a heartbeat")
    while len(verdicts) < len(locked):
        for name, (dep, lk) in locked.items():
            if name in verdicts:
                continue
            value = await heartbeat_of(api, dep, lk)
            seen[name].append(state.Seen(anyio.current_time(), value))
            verdict = state.liveness(seen[name], ttl)
            # the bound is counted like the TTL, from the first look's answer: counted from
            # before it was asked, a slow first look (a new connection's handshakes) ended the
            # watch "still watching" just short of the TTL, and a dead session was refused as
            # if alive
            if not isinstance(verdict, state.Watching) or \
                    seen[name][-1].at - seen[name][0].at >= bound:
                verdicts[name] = verdict
        if len(verdicts) < len(locked):
            waiter.tick()
            await anyio.sleep(look_every(ttl))
    return verdicts


async def clear_the_way(api: Api, deployment: Obj, *, ttl: float, bound: float,
                        progress: Progress, outcome: Outcome) -> Obj:
    """The Deployment, once no live session holds it: a session whose heartbeat this machine
    saw unchanged for `ttl` is restored first (shielded: a Ctrl-C ends bridge after the
    repair); a live one refuses the swap."""
    name = str(deployment["metadata"]["name"])
    lock = state.decode(annotations_of(deployment))
    seen: state.Liveness | None = None
    if lock is not None and state.needs_watching(lock):
        seen = (await watch_sessions(api, {name: (deployment, lock)}, ttl=ttl,
                                     progress=progress))[name]
        current = await api.get_deployment(name)
        now_locked = state.decode(annotations_of(current))
        if now_locked is None or now_locked.session != lock.session:
            # the session ended (or was replaced) while watched: decide on what is there now
            deployment, lock, seen = current, now_locked, None
    decision = state.decide(lock, seen)
    if isinstance(decision, state.RepairFirst):
        lk = decision.lock
        progress.info(f"deployment/{name} was swapped by {lk.owner} (session {lk.session}) "
                      f"{decision.why()}; restoring it first")
        outcome.repaired_stale = True  # the repair changes the cluster, even if it fails
        with anyio.CancelScope(shield=True):
            out = await restore.restore(api, name, progress, lock=lk, wait=True,
                                        wait_timeout=bound)
        if not out.ok:
            outcome.failed_steps += out.failures
            raise BridgeError(f"could not restore the stale session on deployment/{name}; "
                              "fix it as shown above, then try again")
        deployment = await api.get_deployment(name)
        # a lock found now is a new session's (taken since the repair): never repaired unseen
        decision = state.decide(state.decode(annotations_of(deployment)))
    if isinstance(decision, state.Refuse):
        raise BridgeError(decision.explain(name))
    if isinstance(decision, state.Doubtful):  # a lock bridge did not write: never repaired
        raise BridgeError(decision.explain(name))
    if not isinstance(decision, state.Proceed):
        raise BridgeError(f"deployment/{name} is locked")
    return deployment


def _ours_and_needed(check: Callable[[Obj], Obj], dep: Obj,
                     needed: Callable[[Obj], bool] | None) -> bool:
    try:
        check(dep)
    except NotOurs:
        return False
    return needed is None or bool(needed(dep))


def unchanged_for_the_lock(planned: Obj, now_read: Obj) -> bool:
    """Whether the lock may still be written on `now_read`, the plan having been made from
    `planned`: the same object (uid), the same spec, and no lock on it."""
    def uid(o: Obj) -> Any:
        return (o.get("metadata") or {}).get("uid")
    return (uid(planned) == uid(now_read) and planned.get("spec") == now_read.get("spec")
            and state.decode(annotations_of(now_read)) is None)


@dataclass
class Lease:
    """This session's hold on deployment/`name`."""

    api: Api
    name: str
    lock: state.Lock
    progress: Progress
    # Watches the original's replicas at each heartbeat while they should stay at 0 (armed
    # once this session scaled it to 0): a KEDA/HPA/GitOps controller scaling it back is said.
    drift: controllers.DriftWatch = field(default_factory=controllers.DriftWatch)
    drift_armed: bool = False
    # The proxy Deployment this session created (its UID; empty until then), which carries
    # the heartbeat, and the number of the last beat written on it.
    proxy_uid: str = ""
    beats: int = 0
    # The original as last read or written by this session (its resourceVersion): the first
    # attempt of a write on it, conditional on exactly that version, so a write needs no read
    # first unless the original changed since (then 409, read again, decide again).
    seen: Obj | None = field(default=None, repr=False)

    async def take(self, deployment: Obj, *, outcome: Outcome, stack: CleanupStack,
                   restore_step: Callable[[], Awaitable[Any]]) -> None:
        """Write the lock, conditional on the Deployment as read. `restore_step` (the undo) is
        pushed before the write: if its outcome is unknown (cancelled, or no answer), the
        restore finds out, and touches only a lock of ours. A conflict is read again: a write
        that left the Deployment unlocked and its spec as planned (the controller's status
        updates, its revision annotation) is retried; a lock or a spec change refuses."""
        handle = stack.push(f"restoring deployment/{self.name}", restore_step)
        try:  # before the lock exists: a bridge killed from now on is known dead here at once
            localstate.register(self.lock.session, self.api.namespace, self.name)
        except (OSError, BridgeError) as e:
            self.progress.detail(f"could not record the session on this machine ({e}); if "
                                 "bridge is killed, the next swap watches its heartbeat")
        first = [deployment]  # the first attempt writes on the Deployment the plan was made of

        async def read() -> Obj:
            return first.pop() if first else await self.api.get_deployment(self.name)

        def decide(dep: Obj) -> dict[str, Any]:
            if not unchanged_for_the_lock(deployment, dep):
                raise BridgeError(f"deployment/{self.name} changed while bridge was taking it "
                                  "(another swap?); try again")
            return state.lock_patch(self.lock)

        try:
            await conditional.patch_when(
                read, self._write, decide, what=f"deployment/{self.name} (taking the lock)")
        except Unreachable:
            outcome.touched = True  # the lock may have been taken: the restore finds out
            raise
        except (ApiError, BridgeError):
            stack.discard(handle)  # refused, or it kept changing: the lock was not taken
            localstate.forget(self.lock.session)
            raise
        except BaseException:
            outcome.touched = True  # cancelled mid-request: the restore finds out
            raise
        outcome.touched = True

    # -- still ours? ----------------------------------------------------------------------

    def check(self, dep: Obj) -> Obj:
        """`dep` while it carries this session's lock, else NotOurs."""
        found = state.decode(annotations_of(dep))
        if found is None or found.session != self.lock.session:
            raise NotOurs(f"deployment/{self.name} was restored or taken over by someone "
                          "else (bridge restore?) while this session ran")
        return dep

    async def read(self) -> Obj:
        try:
            self.seen = await self.api.get_deployment(self.name)
        except NotFound as e:
            self.seen = None
            raise NotOurs(f"deployment/{self.name} was deleted while swapped") from e
        return self.seen

    async def _write(self, patch: dict[str, Any]) -> Obj:
        self.seen = None  # unknown until answered
        self.seen = await self.api.patch_deployment(self.name, patch)
        return self.seen

    async def still_ours(self) -> Obj:
        """The Deployment while this session holds its lock; NotOurs once someone else
        restored (or took) it or it was deleted. API trouble is raised as it is."""
        return self.check(await self.read())

    async def still_ours_unless_unsure(self) -> None:
        """NotOurs when the lock is gone, or the proxy Deployment is (no pod would ever come
        back, and the original stays at zero). API trouble is no answer, so no verdict."""
        try:
            await self.still_ours()
            await self.api.get_deployment(self.lock.proxy)
        except NotFound as e:
            raise NotOurs(f"proxy deployment/{self.lock.proxy} was deleted while swapped "
                          "(by someone else?)") from e
        except NotOurs:
            raise
        except BridgeError:
            pass

    # -- writes to the original -----------------------------------------------------------

    async def _patch_if_ours(self, patch: dict[str, Any], what: str,
                             needed: Any = None, seen: Any = None) -> None:
        def decide(dep: Obj) -> dict[str, Any] | None:
            self.check(dep)
            if seen is not None:
                seen(dep)
            return patch if needed is None or needed(dep) else None

        # The first attempt on the original as this session last saw it (one round trip, not
        # two): the write is conditional on that very version, so the lock is proven ours on
        # what is written; only a fresh read may conclude there is nothing to write.
        known = self.seen
        first = [known] if known is not None and _ours_and_needed(
            self.check, known, needed) else []

        async def read() -> Obj:
            return first.pop() if first else await self.read()

        await conditional.patch_when(
            read, self._write, decide, what=f"deployment/{self.name} ({what})")

    async def scale_original(self, replicas: int) -> None:
        """Only while the lock is still ours (a colleague's `bridge restore` may have cleared
        it since the last heartbeat)."""
        if replicas:
            self.drift_armed = False  # from now on the original is meant to scale up
        await self._patch_if_ours(
            plan.scale_patch(replicas), f"scaling to {replicas}",
            lambda dep: int(dep.get("spec", {}).get("replicas", 1)) != replicas)
        if not replicas:
            self.drift_armed = True  # from now on the replicas should stay 0

    def observe(self, dep: Obj) -> None:
        """Say (once) when the original was scaled up by someone else while at 0."""
        if self.drift_armed:
            line = self.drift.observe(dep)
            if line:
                self.progress.warn(line)

    async def beat(self) -> None:
        """One heartbeat: the original is read (NotOurs once the lock is not ours; nothing is
        written on it), then the next sequence number is written on this session's proxy
        Deployment (from its creation on; before, observers see no heartbeat, which is not
        "stale" until it stays so for their TTL). A proxy Deployment that is gone or not the
        one created gets no beat."""
        self.observe(await self.still_ours())
        if not self.proxy_uid:
            return
        proxy = self.lock.proxy

        async def read() -> Obj:
            try:
                return await self.api.get_deployment(proxy)
            except NotFound:
                raise ProxyGone from None

        def decide(dep: Obj) -> dict[str, Any] | None:
            if (dep.get("metadata") or {}).get("uid") != self.proxy_uid:
                return None  # not the proxy this session created: nothing is written on it
            return state.heartbeat_patch(self.beats, now())

        self.beats += 1  # a number never written before, even if the last write's fate is unknown
        try:
            await conditional.patch_when(
                read, lambda p: self.api.patch_deployment(proxy, p), decide,
                what=f"deployment/{proxy} (heartbeat)")
        except conditional.KeptChanging:
            pass  # changed again and again under us: the next beat will do
        except ProxyGone:
            # deleted (a restore deletes the proxy, then clears the lock) or replaced: no
            # beat; whether the session can go on is the link's verdict (still_ours_unless_
            # unsure) and the next beat's (the lock)
            pass

    async def heartbeat(self, interval: float) -> None:
        """A beat every interval; raise NotOurs once the lock (or the proxy) is not ours."""
        failing = False
        while True:
            await anyio.sleep(interval)
            try:
                await self.beat()
                if failing:
                    self.progress.info("heartbeat: the API server answers again")
                failing = False
            except NotOurs:
                raise
            except BridgeError as e:
                if not failing:
                    self.progress.warn(f"heartbeat failed ({e}); retrying")
                failing = True

    async def beat_quietly(self, interval: float) -> None:
        """The heartbeat while the restore waits (the original may take longer to be Ready than
        the TTL), so nobody repairs this session under its feet; nothing it raises may cut the
        restore short."""
        while True:
            await anyio.sleep(interval)
            try:
                await self.beat()
            except NotOurs:
                return
            except Exception:  # noqa: BLE001 - nothing here may cut the restore short
                pass

    # -- the end --------------------------------------------------------------------------

    async def release(self, *, wait: bool, bound: float, heartbeat_interval: float
                      ) -> restore.Outcome:
        """The restore of this session's swap, with the heartbeat going on meanwhile."""
        self.drift_armed = False
        self.progress.info(f"restoring deployment/{self.name}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.beat_quietly, heartbeat_interval)
            out = await restore.restore(self.api, self.name, self.progress, lock=self.lock,
                                        wait=wait, wait_timeout=bound, local_check=False)
            tg.cancel_scope.cancel()
        if out.ok:
            self.progress.info(f"deployment/{self.name} restored")
        return out
