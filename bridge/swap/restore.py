"""Putting a swapped Deployment back: replicas up and Ready, proxy deleted, annotations cleared
(on the Deployment, and the copies the Deployment controller made on its ReplicaSets).

Used when a session ends (whatever ended it), by `bridge restore` after a session died, and by
a new swap that finds a stale session. The steps run independently — one failing does not skip
the others — and every failure is reported with the kubectl command that finishes it by hand.
Idempotent: restoring a restored Deployment changes nothing. `repair` is the body of
`bridge restore`. What it waits for is bridge.kube.readiness's; its retries are
bridge.kube.retry's; the processes and files a dead session left on this machine are
bridge.local.leftovers'.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from bridge.errors import BridgeError
from bridge.kube import conditional, readiness
from bridge.kube.client import Api, NotFound, Obj
from bridge.kube.retry import RetryPolicy, call_with_retries
from bridge.local import leftovers
from bridge.local import records as localstate
from bridge.model import plan, state, trust
from bridge.model.target import name_of
from bridge.progress import Progress
from bridge.swap import proofs
from bridge.swap.resolve import resolve_target

T = TypeVar("T")

DEFAULT_TIMEOUT = 120.0
OBSERVED_WITHIN = 30.0  # how long the restore waits for the controller to see the lock gone
# One restore step keeps retrying (every second, for 20 s) while the API server does not
# answer, throttles or answers 5xx: a restore is worth waiting for, and every step it retries
# is safe to repeat (a read, a delete, a merge patch of replicas or of bridge's annotations).
RETRY = RetryPolicy(attempts=1000, base=1.0, cap=1.0, jitter=0.0, within=20.0)

# `watch(kube, {name: (deployment, lock)}, progress)`: whether the sessions are alive
# (lease.watch_sessions, bounded by the caller)
WatchSessions = Callable[[Api, dict[str, tuple[Obj, state.Lock]], Progress],
                         Awaitable[dict[str, state.Liveness]]]


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)  # one line each, with the manual fix
    restored: bool = False  # something was actually put back

    @property
    def ok(self) -> bool:
        return not self.failures


def kubectl(kube: Api, *args: str) -> str:
    base = ["kubectl"]
    if kube.context:
        base += ["--context", kube.context]
    base += ["-n", kube.namespace]
    return " ".join(shlex.quote(a) for a in base + list(args))


async def _retrying(what: str, call: Callable[[], Awaitable[T]], progress: Progress) -> T:
    """`call()`, retried as RETRY says (bridge.kube.retry); each retry said as a warning."""
    return await call_with_retries(
        call, policy=RETRY, idempotent=True,
        on_retry=lambda e, _delay: progress.warn(f"{what}: {e}; retrying"))


def report_leftovers(session: str, progress: Progress) -> None:
    """Say which local processes of a dead session still run (they may hold the ports)."""
    for left in leftovers.find(session):
        progress.warn(f"a process of session {session} still runs on this machine: "
                      f"{left.describe()}; stop it with `kill {left.pid}`")


async def restore(kube: Api, name: str, progress: Progress, *, lock: state.Lock | None = None,
                  wait: bool = True, wait_timeout: float = DEFAULT_TIMEOUT,
                  local_check: bool = True) -> Outcome:
    """Restore deployment `name`. With `lock` (the session's own), only that session's state
    is touched; without, whatever lock the Deployment carries is repaired. With `local_check`,
    processes (reported) and files (removed) dead sessions left on this machine are seen to:
    the repair of a dead session, not the end of a live one (whose own files its cleanup stack
    removes)."""
    if local_check:
        await leftovers.remove_files(progress.info)  # files (issue 15)
    out = Outcome()
    original: Obj | None = None
    try:
        original = await _retrying(f"reading deployment/{name}",
                                   lambda: kube.get_deployment(name), progress)
    except BridgeError as e:
        if lock is None:
            raise
        if not isinstance(e, NotFound):
            # Nothing can be checked: leave the proxy and the lock, so that the Deployment
            # stays locked and `bridge restore` finds all it needs to finish.
            scale = kubectl(kube, "scale", f"deployment/{name}", f"--replicas={lock.replicas}")
            delete = kubectl(kube, "delete", f"deployment/{lock.proxy}")
            out.failures.append(f"could not read deployment/{name}: {e}; nothing was "
                                f"restored; run `bridge restore {name}` (or: {scale}; {delete})")
            progress.error(out.failures[-1])
            return out
        progress.warn(f"deployment/{name} no longer exists; removing what bridge left")
    found = state.decode((original or {}).get("metadata", {}).get("annotations"))
    if lock is None:
        if found is None:
            progress.info(f"deployment/{name} is not swapped; nothing to restore")
            if original is not None:  # copies an earlier session (or version) left behind
                await clean_replicasets(kube, original, progress, out, settled=True)
            return out
        doubts = state.lock_problems(found)  # security: act on no field of a forgery
        if doubts:
            out.failures.append(state.Doubtful(found, tuple(doubts)).explain(name)
                                + "; nothing was changed")
            progress.error(out.failures[-1])
            return out
        lock = found
    if local_check:
        report_leftovers(lock.session, progress)
    ours = found is not None and found.session == lock.session
    doubt = lock.proxy and await proofs.proxy_doubt(kube, name, original, lock.session,
                                                   lock.proxy)  # security: prove, or
    if doubt:  # change nothing and say how to finish by hand
        out.failures.append(doubt)
        progress.error(doubt)
        return out

    scaled = True
    if original is not None and ours:
        scaled = await _scale_back(kube, name, original, lock, progress, wait, wait_timeout, out)
    elif original is not None and found is not None:
        progress.warn(f"deployment/{name} is now held by session {found.session} of "
                      f"{found.owner}; leaving its replicas and annotations alone")

    if lock.proxy:
        await _delete_proxy(kube, lock, progress, wait, wait_timeout, out)

    annotations = (original or {}).get("metadata", {}).get("annotations") or {}
    stray = found is None and any(k in annotations for k in state.KEYS)
    if original is not None and (ours or stray):
        if scaled:
            try:
                if await _clear_lock(kube, name, lock.session if ours else None, progress):
                    out.restored = True
                    progress.detail(f"cleared bridge's annotations on deployment/{name}")
                    await clean_replicasets(kube, original, progress, out)
            except BridgeError as e:
                keys = " ".join(k + "-" for k in state.KEYS)
                out.failures.append(
                    f"could not clear bridge's annotations on deployment/{name}: {e}; run: "
                    f"{kubectl(kube, 'annotate', 'deployment/' + name)} {keys}")
                progress.error(out.failures[-1])
        else:
            progress.warn(f"kept bridge's annotations on deployment/{name} so that "
                          f"`bridge restore {name}` can finish the job")
    if out.ok:  # the session is over: this machine's record of it (if any) is done with
        localstate.forget(lock.session)
    return out


async def _delete_proxy(kube: Api, lock: state.Lock, progress: Progress, wait: bool,
                        wait_timeout: float, out: Outcome) -> None:
    proxy = lock.proxy
    try:
        if await _retrying(f"deleting deployment/{proxy}",
                           lambda: kube.delete_deployment(proxy), progress):
            out.restored = True
            progress.info(f"deleted proxy deployment/{proxy}")
        if wait and not await readiness.wait_pods_gone(
                kube, f"{state.SESSION_LABEL}={lock.session}", wait_timeout, progress,
                f"the pods of deployment/{proxy} to terminate"):
            progress.warn(f"pods of deployment/{proxy} are still terminating")
    except BridgeError as e:
        out.failures.append(f"could not delete proxy deployment/{proxy}: {e}; "
                            f"run: {kubectl(kube, 'delete', 'deployment/' + proxy)}")
        progress.error(out.failures[-1])


def ours_on_replicaset(rs: Obj) -> list[str]:
    """The annotation keys of bridge's on a ReplicaSet (the Deployment controller copies the
    Deployment's annotations onto its new ReplicaSet, and never removes them)."""
    return sorted(k for k in (rs.get("metadata", {}).get("annotations") or {})
                  if k.startswith(state.PREFIX))


def owned_by(rs: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("kind") == "Deployment"
               for ref in rs.get("metadata", {}).get("ownerReferences") or [])


def unlocked_and_observed(dep: Obj) -> bool | None:
    """True once the Deployment carries none of bridge's annotations and its controller has
    seen that version (status.observedGeneration), so it copies none of them any more;
    None when it carries a lock again (a new session: its annotations are not ours to clean);
    False while the controller has not caught up."""
    annotations = dep.get("metadata", {}).get("annotations") or {}
    if any(k in annotations for k in state.KEYS):
        return None
    st = dep.get("status") or {}
    return int(st.get("observedGeneration") or 0) >= int(
        dep.get("metadata", {}).get("generation") or 0)


async def clean_replicasets(kube: Api, original: Obj, progress: Progress, out: Outcome, *,
                            settled: bool = False) -> None:
    """Remove every `bridge-k8s.io/` annotation from the ReplicaSets the original owns (by
    UID), once the controller observed the Deployment without the lock (bounded wait; unless
    `settled`: nothing was changed just now). Lacking the permission (or time), one warning
    names the leftover and the command that removes it; the restore still succeeds."""
    meta = original.get("metadata") or {}
    name, uid = str(meta.get("name")), str(meta.get("uid") or "")
    if not uid:
        return
    sel = readiness.match_labels_selector(original)
    seen: bool | None = False
    if not settled:
        async def observed(deps: list[Obj]) -> tuple[bool | None] | None:
            mine = [d for d in deps if name_of(d) == name]
            verdict = unlocked_and_observed(mine[0]) if mine else None  # gone: nothing to do
            return None if verdict is False else (verdict,)
        with anyio.move_on_after(OBSERVED_WITHIN):
            try:
                (seen,) = await readiness.until(kube, readiness.deployment(name), observed)
            except BridgeError as e:
                seen = None
                progress.warn(f"could not read deployment/{name} ({e}); the copies "
                              "of bridge's annotations on its ReplicaSets are left")
        if seen is None:
            return
        if seen is False:
            progress.warn(f"the controller of deployment/{name} has not observed the lock "
                          f"removed after {OBSERVED_WITHIN:g}s; cleaning its ReplicaSets "
                          "anyway")
    try:
        replicasets = [rs for rs in await kube.list_replicasets_strict(sel)
                       if owned_by(rs, uid) and ours_on_replicaset(rs)]
    except BridgeError as e:
        if not settled:
            progress.warn(f"could not list the ReplicaSets of deployment/{name} ({e}); any "
                          "copy of bridge's annotations on them stays; remove it with: "
                          + kubectl(kube, "annotate", "replicaset", "-l", sel or "...",
                                    *(k + "-" for k in state.KEYS)))
        return
    for rs in replicasets:
        rs_name = str(rs["metadata"]["name"])
        keys = ours_on_replicaset(rs)
        try:
            await _retrying(f"cleaning replicaset/{rs_name}",
                            functools.partial(kube.patch_replicaset, rs_name,
                                              {"metadata": {"annotations": dict.fromkeys(keys)}}),
                            progress)
            progress.detail(f"removed bridge's annotations from replicaset/{rs_name}")
        except BridgeError as e:
            progress.warn(f"could not remove bridge's annotations from replicaset/{rs_name} "
                          f"({e}); the restore is otherwise complete; remove them with: "
                          + kubectl(kube, "annotate", "replicaset/" + rs_name,
                                    *(k + "-" for k in keys)))


async def _clear_lock(kube: Api, name: str, session: str | None, progress: Progress) -> bool:
    """Remove our annotations, only while they still hold `session` (None: no lock, only stray
    keys). The patch is conditional on what was read, so a swap that took the Deployment in
    between is seen, never overwritten. False when it was not ours to clear."""
    def decide(dep: Obj) -> dict[str, object] | None:
        found = state.decode(dep.get("metadata", {}).get("annotations"))
        if (found.session if found else None) != session:
            holder = f"session {found.session} of {found.owner}" if found else "nobody"
            progress.warn(f"deployment/{name} is now held by {holder}; leaving its "
                          "annotations alone")
            return None
        return state.clear_patch()

    return await conditional.patch_when(
        lambda: _retrying(f"reading deployment/{name}", lambda: kube.get_deployment(name),
                          progress),
        lambda patch: _retrying(f"clearing bridge's annotations on deployment/{name}",
                                lambda: kube.patch_deployment(name, patch), progress),
        decide, what=f"deployment/{name}")


async def _scale_back(kube: Api, name: str, original: Obj, lock: state.Lock,
                      progress: Progress, wait: bool, wait_timeout: float, out: Outcome) -> bool:
    """Replicas back to the recorded count; with `wait`, until they are Ready (bounded)."""
    current = int(original.get("spec", {}).get("replicas", 1))
    fix = kubectl(kube, "scale", f"deployment/{name}", f"--replicas={lock.replicas}")
    if current != lock.replicas:
        try:
            replicas = plan.scale_patch(lock.replicas)
            await _retrying(f"scaling deployment/{name}",
                            lambda: kube.patch_deployment(name, replicas), progress)
            out.restored = True
            progress.info(f"scaled deployment/{name} back to {lock.replicas} "
                          f"replica{'s' if lock.replicas != 1 else ''}")
        except BridgeError as e:
            out.failures.append(f"could not scale deployment/{name} back to {lock.replicas}: "
                                f"{e}; run: {fix}")
            progress.error(out.failures[-1])
            return False
    if wait and lock.replicas > 0 and current != lock.replicas:
        try:
            await readiness.wait_original_ready(kube, name, lock.replicas, wait_timeout,
                                                progress)
        except TimeoutError:
            progress.warn(f"deployment/{name} is not Ready after {wait_timeout:g}s; check "
                          f"{kubectl(kube, 'rollout', 'status', 'deployment/' + name)}")
        except BridgeError as e:
            progress.warn(f"could not follow deployment/{name} becoming Ready: {e}")
    return True


async def restore_all(kube: Api, progress: Progress, *, wait: bool = True,
                      wait_timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """Every swapped Deployment of the namespace, and proxies no session holds any more."""
    await leftovers.remove_files(progress.info)  # files (issue 15)
    total = Outcome()
    deployments = await kube.list_deployments()
    live_sessions = set()
    for dep in deployments:
        labels = dep.get("metadata", {}).get("labels") or {}
        lock = state.decode(dep.get("metadata", {}).get("annotations"))
        if lock is None or labels.get(state.MANAGED_BY_LABEL) == state.MANAGED_BY:
            continue
        live_sessions.add(lock.session)
        out = await restore(kube, name_of(dep), progress, wait=wait, wait_timeout=wait_timeout)
        total.failures += out.failures
        total.restored |= out.restored
    for dep in deployments:
        labels = dep.get("metadata", {}).get("labels") or {}
        if labels.get(state.MANAGED_BY_LABEL) != state.MANAGED_BY:
            continue
        session = labels.get(state.SESSION_LABEL, "")
        if session in live_sessions or not labels.get(state.PROXY_FOR_LABEL):
            continue
        orphan = name_of(dep)
        original = (dep.get("metadata", {}).get("annotations") or {}).get(state.PROXY_FOR_LABEL)
        owner = next((d for d in deployments if name_of(d) == original), None)
        doubts = trust.proxy_deployment_problems(
            dep, str(original), session, (owner or {}).get("metadata", {}).get("uid"))
        if doubts or not original:
            progress.warn(f"left deployment/{state.printable(orphan)} alone: labelled as "
                          f"bridge's proxy but {'; '.join(doubts) or 'no original named'}")
            continue
        try:
            if await kube.delete_deployment(orphan):
                total.restored = True
                progress.info(f"deleted orphaned proxy deployment/{orphan}")
        except BridgeError as e:
            total.failures.append(f"could not delete proxy deployment/{orphan}: {e}; run: "
                                  f"{kubectl(kube, 'delete', 'deployment/' + orphan)}")
            progress.error(total.failures[-1])
    if not total.restored and not total.failures:
        progress.info(f"nothing to restore in namespace {kube.namespace}")
    return total


async def repair(kube: Api, target: str | None, progress: Progress, *, wait: bool,
                 wait_timeout: float, watch: WatchSessions) -> Outcome:
    """`bridge restore TARGET` (or every swapped Deployment when `target` is None): restored
    whatever session holds it; a session still alive (`watch` saw its heartbeat change) is
    warned about first, then restored anyway."""
    if target is None:
        return await restore_all(kube, progress, wait=wait, wait_timeout=wait_timeout)
    dep, _ = await resolve_target(kube, target)
    name = name_of(dep)
    lock = state.decode(dep.get("metadata", {}).get("annotations"))
    if lock is not None and state.needs_watching(lock):
        # restored anyway: watched only long enough to see a live session beat, to warn
        # before breaking it
        seen = await watch(kube, {name: (dep, lock)}, progress)
        verdict = seen[name]
        if isinstance(verdict, state.Running):  # known from this machine's record: not watched
            progress.warn(f"deployment/{name} is held by your own bridge on this machine "
                          f"({verdict.where()}); restoring anyway (Ctrl-C in that bridge "
                          "would have restored it too)")
        elif isinstance(verdict, state.Alive):
            progress.warn(f"the session of {lock.owner} on deployment/{name} is still alive "
                          "(its heartbeat changed); restoring anyway")
    return await restore(kube, name, progress, wait=wait, wait_timeout=wait_timeout)
