"""The link phase: the proxy pod, its host key, the port-forward, SSH, the remote forwards, and
the ONE reconnect policy (used during the hand-over and by the watchdog while holding).

In: the proxy's session id, container and SSH port, the client key, the ports. Out: a `Link`
(pod name, port-forwarder, `tunnel.Tunnel`). Hook point: every coroutine in
`Linker.on_connect` runs with each new Link (the first one and every reconnect) before it is
used; a feature riding the SSH connection (e.g. an outbound proxy) subscribes there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from bridge.errors import BridgeError
from bridge.kube.client import Api, ApiError, Obj
from bridge.model import diagnose, state, target, trust
from bridge.progress import Progress
from bridge.swap import proofs
from bridge.swap.lease import NotOurs
from bridge.swap.together import at_once
from bridge.transport import tunnel as tunnelmod
from sidecar import protocol

POLL = 0.25
LOG_TAIL = 5
# On a reconnect, how long a refused remote forward is retried: a sidecar that has not yet
# noticed the previous connection died holds its ports until its keepalives give up
# (protocol.DEFAULT_KEEPALIVE_SECONDS x KEEPALIVE_COUNT_MAX), plus a margin.
FORWARD_PATIENCE = 2 * protocol.DEFAULT_KEEPALIVE_SECONDS * protocol.KEEPALIVE_COUNT_MAX
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0
_BAD_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                "ErrImageNeverPull"}


@dataclass
class Link:
    """The live connection to the sidecar: port-forward + SSH (+ remote forwards)."""

    pod: str
    forwarder: Any
    tunnel: Any
    env: dict[str, str] | None = None  # the pod's environment, when read as the link came up

    async def close(self) -> None:
        """Close SSH then the port-forward; each bounded, the second whatever the first did."""
        try:
            with anyio.move_on_after(5):
                await self.tunnel.close()
        finally:
            with anyio.move_on_after(5):
                await self.forwarder.close()


@dataclass
class LinkSpec:
    """What the link needs to know about the proxy (all fixed by the plan)."""

    session: str
    container: str
    ssh_port: int
    client_key: Any
    ports: Sequence[target.PortMap]
    keepalive_interval: float = 5.0
    proxy: str = ""  # the proxy Deployment's name
    # The planned pod spec: a pod is trusted only when it runs this (trust.pod_problems).
    planned_spec: Obj = field(default_factory=dict)
    # The planned pod template's metadata: the labels and annotations a proven pod carries
    # (empty: only the session label).
    planned_meta: Obj = field(default_factory=dict)


@dataclass
class Linker:
    api: Api
    open_forwarder: Callable[[str], Any]  # pod name -> a port-forwarder (has .close())
    spec: LinkSpec
    progress: Progress
    still_ours: Callable[[], Awaitable[None]]  # NotOurs when going on is pointless
    timeout: float = 120.0  # bound on one attempt of a reconnect without a total bound
    reconnected: bool = False  # the link was lost and re-made at least once
    current: Link | None = None  # the link in use (None while reconnecting, after close)
    on_connect: list[Callable[[Link], Awaitable[None]]] = field(default_factory=list)
    # The UID of the proxy Deployment bridge created (from the create response): the pods
    # trusted are those whose ReplicaSet it controls.
    proxy_uid: str = ""
    refused: set[str] = field(default_factory=set)  # pods said once to be not bridge's
    # local port -> the address the command listens on (default 127.0.0.1; ::1 for a
    # command listening on IPv6 only), set by the session once the command listens
    local_hosts: dict[int, str] = field(default_factory=dict)
    said_waiting: str = ""  # the last scheduling / readiness-gate line said
    # What admission (a mesh) added to the original's own pods, read before the swap: the
    # proxy pod may carry the same (trust.admitted); and why nothing is, when that is so.
    admitted: trust.Admitted = trust.NOTHING_ADMITTED
    admitted_note: str = ""
    pod_uid: str = ""  # the pod of the link in use: a reconnect keeps to it while it lives
    # told (one line) when a forwarded connection reached another user's listener (the tunnel
    # closed it before a byte was sent): the session ends
    on_foreign: Callable[[str], None] | None = None
    _chosen_uid: str = ""

    async def connect(self, *, first: bool, forward: bool = True,
                      read_env: bool = False) -> Link:
        """Find the proxy pod, read its host key, port-forward + SSH, remote-forward the
        ports (with `forward`); with `read_env`, the pod's environment is read beside the
        sidecar's version (Link.env)."""
        pod, host_key = await self.wait_pod(first)
        forwarder = self.open_forwarder(pod)
        try:
            tun = await tunnelmod.Tunnel.connect(
                host="127.0.0.1", port=self.spec.ssh_port, client_key=self.spec.client_key,
                host_key=host_key, tunnel=forwarder,
                keepalive_interval=self.spec.keepalive_interval)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await forwarder.close()
            raise
        link = Link(pod, forwarder, tun)
        try:
            info, link.env = await first_words(tun, read_env)
            self.progress.detail(state.printable(f"sidecar {info.get('sidecar')} protocol "
                                                 f"{info.get('protocol')}"))
            if forward:
                await self.forward(link, patience=0.0 if first else FORWARD_PATIENCE)
            if first:
                await self._run_hooks(link)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await link.close()
            raise
        self.progress.info(f"tunnel to pod {state.printable(pod)} up")
        self.current = link
        self.pod_uid = self._chosen_uid
        return link

    async def _run_hooks(self, link: Link) -> None:
        for hook in self.on_connect:
            await hook(link)

    async def close(self) -> None:
        if self.current is not None:
            link, self.current = self.current, None
            await link.close()

    async def watch(self) -> None:
        """While holding: reconnect (with the forwards) whenever the connection drops."""
        while True:
            assert self.current is not None
            await self.current.tunnel.wait_closed()
            self.progress.warn("connection to the proxy pod lost; reconnecting")
            await self.reconnect(self.current, forward=True, within=None)

    async def withdraw(self) -> bool:
        """Ask the sidecar to report not Ready (forwards kept); False when it could not be
        asked (no link, or a sidecar without the command): the proxy then stays Ready until it
        is deleted."""
        if self.current is None or self.current.tunnel.is_closed():
            return False
        try:
            with anyio.fail_after(5):
                await self.current.tunnel.withdraw()
            return True
        except (BridgeError, TimeoutError) as e:
            self.progress.warn("could not take the proxy pod out of the endpoints: "
                               + state.printable(str(e), 300))
            return False

    async def reconnect(self, old: Link, *, forward: bool, within: float | None) -> Link:
        """THE reconnect policy: close the old link, try again with backoff (0.5s doubling to
        5s), each attempt bounded; checks between attempts that the lease and the proxy still
        exist (NotOurs ends it). `within`: a bound on the whole (None: until it works)."""
        self.reconnected = True
        self.current = None
        with anyio.CancelScope(shield=True):
            await old.close()
        started = time.monotonic()
        delay = BACKOFF_FIRST
        attempt_bound = max(self.timeout, 10.0)
        while True:
            left = None if within is None else within - (time.monotonic() - started)
            if left is not None and left <= 0:
                raise BridgeError(f"could not reconnect to the proxy pod within {within:g}s")
            try:
                with anyio.fail_after(attempt_bound if left is None else left):
                    link = await self.connect(first=False, forward=forward)
                # the features' hooks (e.g. a live sshfs mount riding the new connection) run
                # outside the attempt's deadline: what they start lives as long as the link
                try:
                    await self._run_hooks(link)
                except BaseException:
                    self.current = None
                    with anyio.CancelScope(shield=True):
                        await link.close()
                    raise
                self.progress.info(f"reconnected after {time.monotonic() - started:.1f}s")
                return link
            except TimeoutError:
                if within is not None:
                    raise BridgeError(f"timed out after {within:g}s reconnecting to the proxy "
                                      "pod") from None
                why = "timed out"
            except NotOurs:
                raise
            except Exception as e:  # whatever broke this attempt, the next may work
                why = str(e) or type(e).__name__
            await self.still_ours()
            self.progress.warn(f"reconnecting failed ({state.printable(why, 300)}); "
                               f"retrying in {delay:g}s")
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def forward(self, link: Link, patience: float = 0.0) -> None:
        """Remote-forward every port. A refusal is retried for `patience` seconds: after a
        reconnect the sidecar may still hold the ports for the connection that died."""
        for pm in self.spec.ports:
            waiter = None
            deadline = time.monotonic() + patience
            while True:
                try:
                    await link.tunnel.forward(pm.remote, self.local_host(pm.local), pm.local,
                                              on_foreign=self.on_foreign)
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
            self.progress.detail(f"remote forward {link.pod}:{pm.remote} -> "
                                 f"{self.local_host(pm.local)} port {pm.local}")

    def local_host(self, port: int) -> str:
        return self.local_hosts.get(port, "127.0.0.1")

    async def wait_pod(self, first: bool) -> tuple[str, str]:
        """The running proxy pod and its host key; fails fast when the pod cannot start."""
        waiter = self.progress.waiting("the proxy pod to start" if first
                                       else "the proxy pod to accept a new tunnel")
        selector = f"{state.SESSION_LABEL}={self.spec.session}"
        container = self.spec.container
        checked = time.monotonic()
        last_problem = ""

        async def found(seen: list[Obj]) -> tuple[str, str] | None:
            # decisions on the pods the watch has seen; the host key from the sidecar's log
            nonlocal checked, last_problem
            if not first and time.monotonic() - checked > 2:
                await self.still_ours()  # the proxy may be gone for good
                checked = time.monotonic()
            pods = [q for q in seen if not q.get("metadata", {}).get("deletionTimestamp")]
            # the log of the pod this would choose, were it proven, is read beside the proofs
            # (one round trip, not two); its host key is taken only once the pod is proven
            likely = self.choose([q for q in pods if container_running(q, container)])
            logs: dict[str, str] = {}

            async def read_log() -> None:
                if likely is None:
                    return
                name = target.name_of(likely)
                with contextlib.suppress(ApiError):  # read again below, if still wanted
                    logs[name] = await self.api.pod_log(
                        name, container, limit_bytes=trust.HOST_KEY_LOG_LIMIT)

            proven, _ = await at_once(lambda: self.proven(pods, first), read_log)
            pods = self.choose_order(proven)  # never a pod we cannot prove ours
            if first:  # admission refusals fail now; scheduling and gates are waited out
                await self.check_admission(selector, pods)
            if pods:
                pod = pods[-1]
                pname = target.name_of(pod)
                if first:
                    await self.check_pod(pod)
                else:  # a restart or a crash loop is what we wait out here, not a failure
                    pending = diagnose.pod_waiting(pod)
                    problem = pod_problem(pod, container, past=False) or (
                        pending.line() if pending else "")
                    if problem and problem != last_problem:
                        self.progress.warn(f"proxy pod {pname}: "
                                           f"{state.printable(problem, 300)}; waiting for it")
                    last_problem = problem
                if container_running(pod, container):  # the sidecar's first line, bounded
                    log = logs.get(pname)
                    if log is None:
                        log = await self.api.pod_log(pname, container,
                                                     limit_bytes=trust.HOST_KEY_LOG_LIMIT)
                    host_key = trust.host_key_announcement(log)
                    if host_key:
                        self._chosen_uid = str(trust.meta_of(pod).get("uid") or "")
                        waiter.done(f"proxy pod {pname} running ({waiter.elapsed():.1f}s)")
                        return pname, host_key
            waiter.tick()
            return None
        # [realbeh] the pods watched (list, then one request open), not listed every POLL
        return await self.api.wait_for("pods", selector, found, tick=POLL)

    def choose_order(self, pods: list[Obj]) -> list[Obj]:
        """`pods` oldest first; only the pod already proven and connected to while it lives
        (never a newer one), when it is among them. The last is the one to use."""
        pods = sorted(pods, key=lambda q: str(q.get("metadata", {}).get("creationTimestamp", "")))
        return [q for q in pods if trust.meta_of(q).get("uid") == self.pod_uid] or pods

    def choose(self, pods: list[Obj]) -> Obj | None:
        ordered = self.choose_order(pods)
        return ordered[-1] if ordered else None

    async def proven(self, pods: list[Obj], first: bool = False) -> list[Obj]:
        """The pods proven to be the proxy Deployment's (proofs.proven_pods); each other pod is
        said once and ignored. While the proxy starts (`first`), a refused pod its ReplicaSet
        claims with none proven ends the wait at once: a pod's spec does not change, so
        bridge's own pod, changed by admission, will not become acceptable by waiting."""
        proven, refused, claimed = await proofs.proven_pods(
            self.api, pods, self.proxy_uid, self.spec.planned_spec, self.spec.session,
            planned_meta=self.spec.planned_meta or None, admitted=self.admitted,
            proxy=self.spec.proxy)
        for name in sorted(set(refused) - self.refused):
            self.refused.add(name)
            why = (f"; what admission added to the original's pods is not accepted: "
                   f"{self.admitted_note}" if self.admitted_note else "")
            self.progress.warn("ignoring pod " + trust.describe(
                state.printable(name), refused[name]) + f" (not bridge's proxy{why})")
        if first and not proven and claimed:
            name = sorted(claimed)[0]
            raise BridgeError(
                "the proxy pod " + trust.describe(state.printable(name), refused[name])
                + "; bridge uses a pod only when it runs what bridge planned, plus what "
                "admission added the same way to the original's own running pods ("
                + (self.admitted_note or "they carry something else") + "); if a webhook "
                "or mesh injects this, check that the original's pods are running and carry "
                "the same")
        return proven

    async def check_admission(self, selector: str, pods: list[Obj]) -> None:
        """Fail at once when admission refuses the proxy pod (quota, LimitRange, Pod Security,
        webhooks); say once what a pending pod waits for (Unschedulable, gates)."""
        replicasets = await self.api.list_replicasets(selector) if not pods else []
        verdict = diagnose.diagnose(replicasets, pods)
        if verdict is None:
            return
        if verdict.action == diagnose.FAIL:
            raise BridgeError(diagnose.refusal_message(self.spec.proxy, verdict))
        self.say_waiting(verdict)

    def say_waiting(self, verdict: diagnose.Verdict) -> None:
        line = verdict.line()
        if line != self.said_waiting:
            self.said_waiting = line
            self.progress.warn(f"proxy pod waiting: {line}")

    async def check_pod(self, pod: Obj) -> None:
        """BridgeError (with the log's last lines) when the proxy pod cannot serve. Until a
        first tunnel was up, a sidecar that exited once fails the start; after a reconnect, a
        restart is history and only the present state counts. What a pod that can serve
        waits for (a readiness gate, scheduling) is said once."""
        pname = target.name_of(pod)
        reason = pod_problem(pod, self.spec.container, past=not self.reconnected)
        if not reason:
            waiting = diagnose.pod_waiting(pod)
            if waiting is not None:
                self.say_waiting(waiting)
            return
        tail = ""
        try:  # the pod's own text: bounded, and escaped before it reaches the terminal
            log = await self.api.pod_log(pname, self.spec.container, tail_lines=LOG_TAIL,
                                         limit_bytes=16384)
            lines = [state.printable(ln, 300)
                     for ln in log.splitlines() if ln.strip()][-LOG_TAIL:]
            tail = "; last log lines: " + " | ".join(lines) if lines else "; its log is empty"
        except BridgeError:
            pass
        raise BridgeError(f"proxy pod {pname} failed to start: "
                          f"{state.printable(reason, 300)}{tail}")


async def first_words(tun: Any, read_env: bool) -> tuple[dict[str, Any], dict[str, str] | None]:
    """The sidecar's version reply (its protocol checked) and, with `read_env`, the pod's
    environment: both asked at once (two exec requests on the one SSH connection, one round
    trip). The version's error comes first: an environment is never used from a sidecar of
    another protocol."""
    if not read_env:
        return await tun.version(), None
    info, [env] = await at_once(tun.version, tun.env)
    return info, env


def pod_problem(pod: Obj, container: str, *, past: bool) -> str:
    """Why this proxy pod cannot serve (empty when nothing is wrong that we can see). With
    `past`, a container that terminated earlier (and was restarted) counts too: while the proxy
    starts, a sidecar that exited once will do it again. Without, only the present state
    counts: a sidecar that crashed, was restarted and now runs is fine."""
    st = pod.get("status") or {}
    reason = ""
    if st.get("phase") == "Failed":
        reason = f"failed: {st.get('reason') or ''} {st.get('message') or ''}".strip()
    # Unschedulable is no problem here: autoscalers add nodes for it (diagnose.pod_waiting)
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


def container_running(pod: Obj, container: str) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return bool((cs.get("state") or {}).get("running"))
    return False
