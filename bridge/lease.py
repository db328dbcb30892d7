"""The lease phase: the lock on the original Deployment, its heartbeat, scaling the original,
and the question every step that writes asks first: is the Deployment still ours?

In: the resolved Deployment and the session's `state.Lock`. Out: a `Lease`, whose `release`
is the restore. Every write to the original goes through `conditional.patch_when`, so it never
lands on a lock that is not (or no longer) this session's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from bridge import conditional, controllers, plan, restore, state
from bridge.cleanup import CleanupStack
from bridge.errors import BridgeError
from bridge.kube import Api, ApiError, NotFound, Obj, Unreachable
from bridge.outcome import Outcome
from bridge.progress import Progress


class NotOurs(BridgeError):
    """The session cannot go on: the Deployment is no longer locked by it (restored, taken,
    deleted), or its proxy Deployment is gone."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("annotations") or {})


async def clear_the_way(api: Api, deployment: Obj, *, ttl: float, bound: float,
                        progress: Progress, outcome: Outcome) -> Obj:
    """The Deployment, once no live session holds it: a stale session is restored first
    (shielded: a Ctrl-C ends bridge after the repair); a live one refuses the swap."""
    name = str(deployment["metadata"]["name"])
    decision = state.decide(state.decode(annotations_of(deployment)), now(), ttl)
    if isinstance(decision, state.RepairFirst):
        lk = decision.lock
        progress.info(f"deployment/{name} was swapped by {lk.owner} (session {lk.session}) "
                      f"whose heartbeat stopped {state.describe_age(decision.silent_for)} ago; "
                      "restoring it first")
        outcome.repaired_stale = True  # the repair changes the cluster, even if it fails
        with anyio.CancelScope(shield=True):
            out = await restore.restore(api, name, progress, lock=lk, wait=True,
                                        wait_timeout=bound)
        if not out.ok:
            outcome.failed_steps += out.failures
            raise BridgeError(f"could not restore the stale session on deployment/{name}; "
                              "fix it as shown above, then try again")
        deployment = await api.get_deployment(name)
        decision = state.decide(state.decode(annotations_of(deployment)), now(), ttl)
    if isinstance(decision, state.Refuse):
        raise BridgeError(
            f"deployment/{name} is already swapped by {decision.holder} since "
            f"{state.format_time(decision.since)} (session {decision.session}); "
            f"ask them to end it, or run `bridge restore {name}` if that session is dead")
    if isinstance(decision, state.Doubtful):  # a lock bridge did not write: never repaired
        raise BridgeError(decision.explain(name))
    if not isinstance(decision, state.Proceed):
        raise BridgeError(f"deployment/{name} is locked")
    return deployment


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

    async def take(self, deployment: Obj, *, outcome: Outcome, stack: CleanupStack,
                   restore_step: Callable[[], Awaitable[Any]]) -> None:
        """Write the lock, conditional on the Deployment as read. `restore_step` (the undo) is
        pushed before the write: if its outcome is unknown (cancelled, or no answer), the
        restore finds out, and touches only a lock of ours. A conflict is read again: a write
        that left the Deployment unlocked and its spec as planned (the controller's status
        updates, its revision annotation) is retried; a lock or a spec change refuses."""
        handle = stack.push(f"restoring deployment/{self.name}", restore_step)
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
                read, lambda p: self.api.patch_deployment(self.name, p), decide,
                what=f"deployment/{self.name} (taking the lock)")
        except Unreachable:
            outcome.touched = True  # the lock may have been taken: the restore finds out
            raise
        except (ApiError, BridgeError):
            stack.discard(handle)  # refused, or it kept changing: the lock was not taken
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
            return await self.api.get_deployment(self.name)
        except NotFound as e:
            raise NotOurs(f"deployment/{self.name} was deleted while swapped") from e

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

        await conditional.patch_when(
            self.read, lambda p: self.api.patch_deployment(self.name, p), decide,
            what=f"deployment/{self.name} ({what})")

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
        """One heartbeat, only onto our own lock."""
        try:
            await self._patch_if_ours(state.heartbeat_patch(now()), "heartbeat",
                                      seen=self.observe)
        except conditional.KeptChanging:
            pass  # changed again and again under us: the next beat will do

    async def heartbeat(self, interval: float) -> None:
        """Refresh the lock every interval; raise NotOurs once the lock is not ours."""
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
