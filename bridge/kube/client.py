"""The Kubernetes API edge: kubeconfig loading and the few calls bridge makes, as plain dicts.

Built on the official client's asyncio flavour (`kubernetes.aio`): its kubeconfig loader (token,
client certificate, exec plugins, CA, tls_server_name) and its ApiClient. Requests go through
`ApiClient.call_api` with raw JSON bodies, so objects reach the pure modules exactly as the
server sent them and merge patches can carry `null`. Every failure becomes a one-line
`BridgeError`: a typed `ApiError` (`NotFound`, `Conflict`, `Forbidden`, ...) with the HTTP
status when the server answered, `Unreachable` when it did not.
"""

from __future__ import annotations

import errno
import json
import math
import os
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
import anyio
import yaml
from kubernetes.aio import client as kclient

from bridge.errors import BridgeError, NothingChanged
from bridge.kube import credentials, netconfig
from bridge.kube.retry import DEFAULT as DEFAULT_RETRY
from bridge.kube.retry import RetryPolicy, call_with_retries, parse_retry_after
from bridge.model import endpoints

Obj = dict[str, Any]
T = TypeVar("T")
Check = Callable[[list[Obj]], Awaitable[T | None]]
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30.0
IDEMPOTENT = ("GET", "DELETE")  # [realbeh] repeated after a 5xx or no answer
TICK = 0.25  # how often a wait looks again at what it has seen (stop(), a closed tunnel)
POLL = 0.25  # the list interval when the server will not watch
WATCH_SECONDS = 290  # one watch request's server-side bound (the server may end it earlier)
# the collections `wait_for` follows, by kind (namespaced)
COLLECTIONS = {"pods": "/api/v1/namespaces/{ns}/pods",
               "endpointslices": "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
               "deployments": "/apis/apps/v1/namespaces/{ns}/deployments"}


class ApiError(BridgeError):
    """The API server refused a request; `status` is the HTTP status (0: never answered)."""

    def __init__(self, message: str, status: int, reason: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After)


class NotFound(ApiError):
    """404: the object (or its namespace) does not exist."""


class Conflict(ApiError):
    """409: a conditional write lost (the resourceVersion changed), or the object exists."""


class Forbidden(ApiError):
    """403: RBAC (or an admission plugin) refused the request."""


class Unauthorized(ApiError):
    """401: the credentials were rejected."""


class Invalid(ApiError):
    """422 (or 400): the server would not accept the object as sent."""


class ServerTrouble(ApiError):
    """429 or 5xx: the server is throttling or faltering; worth retrying."""


class NamespaceNotFound(NotFound):
    def __init__(self, namespace: str) -> None:
        super().__init__(f'namespace "{namespace}" not found', 404, "NotFound")


class Unreachable(ApiError):
    """No answer at all (status 0); whether a write landed is unknown."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message, 0)
        self.permanent = permanent  # [realbeh] not worth retrying (TLS, a full timeout)


_BY_STATUS: dict[int, type[ApiError]] = {
    400: Invalid, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    422: Invalid, 429: ServerTrouble}


def error_type(status: int) -> type[ApiError]:
    """The ApiError subclass for an HTTP status."""
    if status >= 500:
        return ServerTrouble
    return _BY_STATUS.get(status, ApiError)


class Api(Protocol):
    """The narrow interface the swap's phases use; `Kube` implements it, tests fake it."""

    namespace: str
    context: str

    async def get_deployment(self, name: str) -> Obj: ...
    async def list_deployments(self, label_selector: str | None = None) -> list[Obj]: ...
    async def create_deployment(self, manifest: Obj) -> Obj: ...
    async def patch_deployment(self, name: str, patch: Obj) -> Obj: ...
    async def delete_deployment(self, name: str) -> bool: ...
    async def get_service(self, name: str) -> Obj: ...
    async def list_services(self) -> list[Obj]: ...
    async def get_endpoints(self, name: str) -> Obj: ...
    async def service_ready_ips(self, service: str) -> set[str]: ...
    async def get_replicaset(self, name: str) -> Obj: ...
    async def list_replicasets(self, label_selector: str) -> list[Obj]: ...
    async def list_replicasets_strict(self, label_selector: str) -> list[Obj]: ...
    async def patch_replicaset(self, name: str, patch: Obj) -> Obj: ...
    async def list_limit_ranges(self) -> list[Obj]: ...
    async def list_scaled_objects(self) -> list[Obj]: ...
    async def list_pods(self, label_selector: str | None = None) -> list[Obj]: ...
    async def pod_log(self, name: str, container: str | None = None, *,
                      tail_lines: int | None = None, limit_bytes: int | None = None) -> str: ...
    async def wait_for(self, kind: str, label_selector: str, check: Check[T], *,
                       tick: float = TICK, field_selector: str = "") -> T: ...


class WatchFailed(Exception):
    """A watch the server would not serve or that broke off (not 410): poll instead."""


class Gone(Exception):
    """410: the resourceVersion is too old to watch from; list again."""


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def resource_version(obj: Obj) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) else ""


def apply_event(objs: dict[str, Obj], event: Any) -> tuple[str, str]:
    """Apply one watch event to the objects by key (pure but for `objs`): returns (type, the
    resourceVersion to watch on from, "" when the event carries none). ERROR events raise:
    `Gone` for 410, `WatchFailed` otherwise, as does anything that is not an event."""
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise WatchFailed(f"not a watch event: {str(event)[:100]}")
    type_, obj = event.get("type"), event["object"]
    if type_ == "ERROR":
        if obj.get("code") == 410:
            raise Gone(str(obj.get("message") or "Gone"))
        raise WatchFailed(f"watch error {obj.get('code')}: {str(obj.get('message'))[:200]}")
    if type_ in ("ADDED", "MODIFIED"):
        objs[object_key(obj)] = obj
    elif type_ == "DELETED":
        objs.pop(object_key(obj), None)
    elif type_ != "BOOKMARK":
        raise WatchFailed(f"unknown watch event type {str(type_)[:40]!r}")
    return str(type_), resource_version(obj)


async def follow(list_once: Callable[[], Awaitable[tuple[list[Obj], str]]],
                 watch_once: Callable[[str, float], AsyncGenerator[Any, None]],
                 publish: Callable[[list[Obj]], None], *, poll: float = POLL) -> None:
    """Keep `publish`ing the current objects of a collection, forever (the caller cancels):
    list, then watch from the list's resourceVersion applying each event; re-list on 410
    Gone; a watch that ends (its timeout) starts again from the last resourceVersion seen; a
    watch that fails otherwise (not allowed, broken off, garbage) turns this into polling the
    list every `poll` seconds. Each watch request is bounded by the caller's deadline."""
    rv = ""
    objs: dict[str, Obj] = {}
    while True:
        if not rv:
            items, rv = await list_once()
            objs = {object_key(o): o for o in items if isinstance(o, dict)}
            publish(list(objs.values()))
        if not rv:  # a server that gives no resourceVersion cannot be watched
            break
        deadline = anyio.current_effective_deadline()
        bound = min(WATCH_SECONDS, max(1.0, deadline - anyio.current_time()))
        try:
            async with aclosing(watch_once(rv, bound)) as events:
                async for event in events:
                    type_, seen = apply_event(objs, event)
                    rv = seen or rv
                    if type_ != "BOOKMARK":
                        publish(list(objs.values()))
        except Gone:
            rv = ""
        except WatchFailed:
            break
    while True:  # the fallback: poll
        await anyio.sleep(poll)
        items, _ = await list_once()
        publish([o for o in items if isinstance(o, dict)])


async def wait_with(feed: Callable[[Callable[[list[Obj]], None]], Awaitable[None]],
                    check: Check[T], *, tick: float = TICK) -> T:
    """Run `feed` (which publishes snapshots) until `check` returns something for one: on
    every new snapshot, and every `tick` seconds on the last one (so a check can notice state
    of its own). `feed`'s errors end the wait."""
    latest: list[list[Obj]] = []
    changed = anyio.Event()

    def publish(objs: list[Obj]) -> None:
        nonlocal changed
        latest[:] = [objs]
        changed.set()

    result: list[T] = []
    try:
        async with anyio.create_task_group() as tg:
            async def run_feed() -> None:
                await feed(publish)
            tg.start_soon(run_feed)
            while True:
                with anyio.move_on_after(tick):
                    await changed.wait()
                changed = anyio.Event()
                if latest:
                    found = await check(latest[0])
                    if found is not None:
                        result.append(found)
                        tg.cancel_scope.cancel()
                        break
    except BaseExceptionGroup as group:  # the feed's (or the check's) own error, as it was
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return result[0]


def kubeconfig_paths(explicit: str | None) -> str:
    """The kubeconfig path list: --kubeconfig, else KUBECONFIG, else ~/.kube/config."""
    if explicit:
        if not Path(explicit).expanduser().exists():
            raise NothingChanged(f"kubeconfig {explicit} does not exist; nothing was changed")
        return explicit
    env = os.environ.get("KUBECONFIG", "")
    if env:
        paths = [p for p in env.split(os.pathsep) if p]
        if not any(Path(p).expanduser().exists() for p in paths):
            raise NothingChanged(f"none of the KUBECONFIG files exist ({env}); nothing was changed")
        return os.pathsep.join(paths)
    default = Path.home() / ".kube" / "config"
    if not default.exists():
        raise NothingChanged(
            f"no kubeconfig: pass --kubeconfig, set KUBECONFIG or create {default}; "
            "nothing was changed"
        )
    return str(default)


def _context_namespace(paths: str, context: str | None) -> tuple[str, str]:
    """(context name, its namespace or "default"), the first file's current-context winning."""
    current = ""
    contexts: dict[str, Obj] = {}
    for p in paths.split(os.pathsep):
        path = Path(p).expanduser()
        if not path.exists():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise NothingChanged(f"cannot read kubeconfig {path}: {e}; nothing was changed") from e
        current = current or str(data.get("current-context") or "")
        for c in data.get("contexts") or []:
            contexts.setdefault(str(c.get("name")), c.get("context") or {})
    name = context or current
    if not name:
        raise NothingChanged("the kubeconfig has no current context; pass --context; "
                          "nothing was changed")
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise NothingChanged(f"context {name!r} not found in the kubeconfig (contexts: {known}); "
                          "nothing was changed")
    return name, str(contexts[name].get("namespace") or "default")


@dataclass
class Kube:
    api_client: kclient.ApiClient
    namespace: str
    context: str
    host: str
    retry_policy: RetryPolicy = DEFAULT_RETRY  # [realbeh]
    # whether the server ever answered: until then a refused connection or a name that does
    # not resolve is the kubeconfig's server being unreachable, said at once (not retried)
    answered: bool = field(default=False, init=False)
    requests: int = 0  # requests sent (each attempt, each watch): the swap's profile counts them
    # of those, the ones sent while no other was waiting for its answer: a round trip the
    # caller waited for on its own (reads sent at once count one), the profile's serial count
    serial: int = 0
    _in_flight: int = field(default=0, init=False, repr=False)

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                      namespace: str | None = None) -> Kube:
        paths = kubeconfig_paths(kubeconfig)
        ctx, ctx_ns = _context_namespace(paths, context)
        configuration = kclient.Configuration()
        try:
            # [realbeh] exec plugins run bounded and stay fresh (bridge/kube/credentials.py)
            await credentials.load_configuration(paths, ctx, configuration)
        except BridgeError:
            raise
        except Exception as e:  # the loader raises many types for a bad kubeconfig
            raise NothingChanged(f"cannot load context {ctx!r} from the kubeconfig: "
                              f"{' '.join(str(e).split())}; nothing was changed") from e
        configuration.retries = None
        netconfig.configure_rest(configuration, os.environ)  # [realbeh] TLS flags, proxy, no netrc
        api = kclient.ApiClient(configuration)
        api.user_agent = "bridge/0.1"
        return cls(api, namespace or ctx_ns, ctx, str(configuration.host))

    async def close(self) -> None:
        await self.api_client.close()
        await netconfig.close_rest(self.api_client.configuration)  # [realbeh]

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the raw request --------------------------------------------------------------------

    async def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                      body: Any = None, content_type: str | None = None, raw: bool = False,
                      request_timeout: float = REQUEST_TIMEOUT) -> Any:
        # [realbeh] retries (bridge/kube/retry.py): 429 always; 5xx/no answer only for GET and
        # DELETE (a conditional PATCH that did apply would come back 409 and read as a race)
        async def once() -> Any:
            return await self._request_once(method, path, query=query, body=body,
                                            content_type=content_type, raw=raw,
                                            request_timeout=request_timeout)
        try:
            return await call_with_retries(once, policy=self.retry_policy,
                                           idempotent=method in IDEMPOTENT)
        except ApiError as e:
            # [realbeh] a 401 with an exec-plugin token: run the plugin again, try once more
            source = credentials.installed(self.api_client.configuration)
            if e.status != 401 or source is None:
                raise
            source.invalidate()
            return await call_with_retries(once, policy=self.retry_policy,
                                           idempotent=method in IDEMPOTENT)

    async def _request_once(self, method: str, path: str, *,
                            query: list[tuple[str, str]] | None, body: Any,
                            content_type: str | None, raw: bool,
                            request_timeout: float) -> Any:
        with self._round_trip():
            return await self._send(method, path, query=query, body=body,
                                    content_type=content_type, raw=raw,
                                    request_timeout=request_timeout)

    @contextmanager
    def _round_trip(self) -> Iterator[None]:
        """Counts a request (`requests`), and a serial one (`serial`) when no other request
        was waiting for its answer as it went out."""
        self.requests += 1
        if self._in_flight == 0:
            self.serial += 1
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def _send(self, method: str, path: str, *,
                    query: list[tuple[str, str]] | None, body: Any,
                    content_type: str | None, raw: bool,
                    request_timeout: float) -> Any:
        headers: dict[str, str] = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        api = self.api_client
        try:
            params = await api.param_serialize(
                method=method, resource_path=path, query_params=query or None,
                header_params=headers, body=body, auth_settings=["BearerToken"],
            )
            resp = await api.call_api(*params, _request_timeout=request_timeout,
                                      _preload_content=False)
            data = await resp.read()
            status = resp.status
            self.answered = True
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            resp.response.release()
        except (aiohttp.ClientConnectorCertificateError, ssl.SSLError,
                aiohttp.ClientSSLError) as e:
            raise Unreachable(f"cannot reach the Kubernetes API at {self.host}: TLS: "
                              f"{_short(e)}", permanent=True) from e
        except (aiohttp.ClientError, OSError) as e:
            why = None if self.answered else never_connected(e)
            if why is not None:  # no use retrying: one line, at once
                raise Unreachable(f"cannot reach the Kubernetes API at {self.host} (context "
                                  f"{self.context}): {why}", permanent=True) from e
            # [realbeh] a TLS failure wrapped by a connector (the SOCKS one) is still TLS
            tls = any(isinstance(x, ssl.SSLError)
                      for x in (getattr(e, "os_error", None), e.__cause__))
            raise Unreachable(f"cannot reach the Kubernetes API at {self.host}: "
                              f"{'TLS: ' if tls else ''}{_short(e)}", permanent=tls) from e
        except TimeoutError as e:
            raise Unreachable(f"cannot reach the Kubernetes API at {self.host}: no answer "
                              f"within {request_timeout:g}s", permanent=True) from e
        if status >= 400:
            error = _api_error(status, data, method, path)
            error.retry_after = retry_after
            raise error
        if raw:
            return data.decode("utf-8", "replace")
        return json.loads(data) if data else {}

    # -- typed calls --------------------------------------------------------------------------

    def _ns(self, namespace: str | None) -> str:
        return quote(namespace or self.namespace, safe="")

    async def get_deployment(self, name: str, namespace: str | None = None) -> Obj:
        return await self._get(f"/apis/apps/v1/namespaces/{self._ns(namespace)}/deployments/"
                               f"{quote(name, safe='')}", namespace)

    async def list_deployments(self, label_selector: str | None = None,
                               namespace: str | None = None) -> list[Obj]:
        return await self._list(f"/apis/apps/v1/namespaces/{self._ns(namespace)}/deployments",
                                label_selector, namespace)

    async def create_deployment(self, manifest: Obj, namespace: str | None = None) -> Obj:
        r: Obj = await self.request(
            "POST", f"/apis/apps/v1/namespaces/{self._ns(namespace)}/deployments", body=manifest)
        return r

    async def patch_deployment(self, name: str, patch: Obj,
                               namespace: str | None = None) -> Obj:
        r: Obj = await self.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{self._ns(namespace)}/deployments/{quote(name, safe='')}",
            body=patch, content_type=MERGE_PATCH)
        return r

    async def delete_deployment(self, name: str, namespace: str | None = None) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            await self.request(
                "DELETE",
                f"/apis/apps/v1/namespaces/{self._ns(namespace)}/deployments/"
                f"{quote(name, safe='')}",
                body={"kind": "DeleteOptions", "apiVersion": "v1",
                      "propagationPolicy": "Background"})
        except NotFound:
            return False
        return True

    async def get_replicaset(self, name: str, namespace: str | None = None) -> Obj:
        return await self._get(f"/apis/apps/v1/namespaces/{self._ns(namespace)}/replicasets/"
                               f"{quote(name, safe='')}", namespace)

    async def get_service(self, name: str, namespace: str | None = None) -> Obj:
        return await self._get(f"/api/v1/namespaces/{self._ns(namespace)}/services/"
                               f"{quote(name, safe='')}", namespace)

    async def list_services(self, namespace: str | None = None) -> list[Obj]:
        return await self._list(f"/api/v1/namespaces/{self._ns(namespace)}/services", None,
                                namespace)

    async def get_endpoints(self, name: str, namespace: str | None = None) -> Obj:
        return await self._get(f"/api/v1/namespaces/{self._ns(namespace)}/endpoints/"
                               f"{quote(name, safe='')}", namespace)

    async def service_ready_ips(self, service: str, namespace: str | None = None) -> set[str]:
        """[realbeh] Ready endpoint addresses of a Service: its EndpointSlices, or the v1
        Endpoints when the server has no discovery.k8s.io/v1 (404)."""
        ns = self._ns(namespace)
        try:
            r = await self.request(
                "GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                query=[("labelSelector", endpoints.slice_selector(service))])
        except ApiError as e:
            if e.status != 404:
                raise
            return endpoints.ready_ips_from_endpoints(await self.get_endpoints(service, namespace))
        return endpoints.ready_ips(list(r.get("items") or []), service)

    async def list_optional(self, path: str, label_selector: str | None = None) -> list[Obj]:
        """[realbeh] A list bridge can do without: [] when the type is not served (404: e.g.
        KEDA not installed) or not allowed (403)."""
        try:
            return await self._list(path, label_selector, None)
        except ApiError as e:
            if e.status in (403, 404):
                return []
            raise

    async def list_scaled_objects(self, namespace: str | None = None) -> list[Obj]:
        return await self.list_optional(
            f"/apis/keda.sh/v1alpha1/namespaces/{self._ns(namespace)}/scaledobjects")

    async def list_limit_ranges(self, namespace: str | None = None) -> list[Obj]:
        return await self.list_optional(f"/api/v1/namespaces/{self._ns(namespace)}/limitranges")

    async def list_replicasets(self, label_selector: str,
                               namespace: str | None = None) -> list[Obj]:
        return await self.list_optional(
            f"/apis/apps/v1/namespaces/{self._ns(namespace)}/replicasets", label_selector)

    async def list_replicasets_strict(self, label_selector: str,
                                      namespace: str | None = None) -> list[Obj]:
        """ReplicaSets, refusals raised (the restore says what it could not clean)."""
        return await self._list(f"/apis/apps/v1/namespaces/{self._ns(namespace)}/replicasets",
                                label_selector, namespace)

    async def patch_replicaset(self, name: str, patch: Obj,
                               namespace: str | None = None) -> Obj:
        r: Obj = await self.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{self._ns(namespace)}/replicasets/{quote(name, safe='')}",
            body=patch, content_type=MERGE_PATCH)
        return r

    async def list_pods(self, label_selector: str | None = None,
                        namespace: str | None = None) -> list[Obj]:
        return await self._list(f"/api/v1/namespaces/{self._ns(namespace)}/pods", label_selector,
                                namespace)

    async def pod_log(self, name: str, container: str | None = None, *,
                      tail_lines: int | None = None, limit_bytes: int | None = None,
                      namespace: str | None = None) -> str:
        query: list[tuple[str, str]] = []
        if limit_bytes is not None:
            query.append(("limitBytes", str(limit_bytes)))
        if container:
            query.append(("container", container))
        if tail_lines is not None:
            query.append(("tailLines", str(tail_lines)))
        r: str = await self.request(
            "GET", f"/api/v1/namespaces/{self._ns(namespace)}/pods/{quote(name, safe='')}/log",
            query=query, raw=True)
        return r

    # -- watches ------------------------------------------------------------------------------

    async def wait_for(self, kind: str, label_selector: str, check: Check[T], *,
                       tick: float = TICK, field_selector: str = "",
                       namespace: str | None = None) -> T:
        """[realbeh] Until `check` returns something for the objects of `kind` (COLLECTIONS)
        matching the selector: list then watch (`follow`), one request open instead of a list
        every POLL. Bound it with the caller's deadline (anyio.fail_after / move_on_after)."""
        path = COLLECTIONS[kind].format(ns=self._ns(namespace))
        query = [("labelSelector", label_selector)] if label_selector else []
        if field_selector:
            query.append(("fieldSelector", field_selector))

        async def list_once() -> tuple[list[Obj], str]:
            r = await self.request("GET", path, query=query)
            meta = r.get("metadata") if isinstance(r, dict) else None
            rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
            return list(r.get("items") or []), rv if isinstance(rv, str) else ""

        def watch_once(rv: str, bound: float) -> AsyncGenerator[Any, None]:
            return self.watch_events(path, query, rv, bound)

        # The first list is checked before any watch is opened: a wait the list already
        # satisfies is one request, and no watch is cut short (a cut watch closes its
        # connection, and the next request would pay a new TCP and TLS handshake).
        listed = [await list_once()]
        found = await check([o for o in listed[0][0] if isinstance(o, dict)])
        if found is not None:
            return found

        async def list_first() -> tuple[list[Obj], str]:
            return listed.pop() if listed else await list_once()

        async def feed(publish: Callable[[list[Obj]], None]) -> None:
            await follow(list_first, watch_once, publish)
        return await wait_with(feed, check, tick=tick)

    async def watch_events(self, path: str, query: list[tuple[str, str]], rv: str,
                           bound: float) -> AsyncGenerator[Any, None]:
        """The events of one watch request from `rv` (bounded by `bound` seconds on the
        server and the client), parsed; HTTP 410 raises `Gone`, any other failure
        `WatchFailed`."""
        seconds = max(1, math.ceil(bound))
        full = [*query, ("watch", "1"), ("resourceVersion", rv),
                ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(seconds))]
        api = self.api_client
        resp = None
        try:
            params = await api.param_serialize(
                method="GET", resource_path=path, query_params=full,
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
            with self._round_trip():  # until the answer's head: then it only waits for events
                resp = await api.call_api(*params, _request_timeout=seconds + REQUEST_TIMEOUT,
                                          _preload_content=False)
            if resp.status == 410:
                raise Gone(f"HTTP 410 watching {path}")
            if resp.status >= 400:
                raise WatchFailed(f"HTTP {resp.status} watching {path}")
            while True:
                line = await resp.response.content.readline()
                if not line:
                    return
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as e:
                        raise WatchFailed(f"not JSON in the watch of {path}") from e
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as e:
            raise WatchFailed(f"watching {path}: {_short(e)}") from e
        finally:
            if resp is not None:
                resp.response.release()

    async def _get(self, path: str, namespace: str | None) -> Obj:
        try:
            r: Obj = await self.request("GET", path)
        except NotFound:
            await self._check_namespace(namespace)
            raise
        return r

    async def _list(self, path: str, label_selector: str | None,
                    namespace: str | None) -> list[Obj]:
        query = [("labelSelector", label_selector)] if label_selector else None
        r = await self.request("GET", path, query=query)
        return list(r.get("items") or [])

    async def _check_namespace(self, namespace: str | None) -> None:
        """Raise a clear error when the namespace itself does not exist."""
        ns = namespace or self.namespace
        try:
            await self.request("GET", f"/api/v1/namespaces/{quote(ns, safe='')}")
        except NotFound as e:
            raise NamespaceNotFound(ns) from e
        except ApiError:
            pass  # forbidden to read namespaces: the original 404 stands


def never_connected(e: BaseException) -> str | None:
    """Why a request could not even open a connection, when it is the address itself: the
    connection was refused (nothing listens there) or the server's name does not resolve.
    None for the rest (resets, timeouts, TLS), which may be a blip worth retrying."""
    if isinstance(e, aiohttp.ClientConnectorDNSError):
        text = getattr(e.os_error, "strerror", None) or _short(e.os_error)
        return f"its name does not resolve ({text}; is the kubeconfig's server right?)"
    if isinstance(e, aiohttp.ClientConnectorError) and \
            getattr(e.os_error, "errno", None) == errno.ECONNREFUSED:
        return ("connection refused: nothing listens there (is the cluster running, is the "
                "kubeconfig's server right?)")
    return None


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


def _api_error(status: int, data: bytes, method: str, path: str) -> ApiError:
    message = reason = ""
    try:
        st = json.loads(data)
        if isinstance(st, dict):
            message = str(st.get("message") or "")
            reason = str(st.get("reason") or "")
    except ValueError:
        message = data.decode("utf-8", "replace").strip()
    message = " ".join(message.split())
    cls = error_type(status)
    if status == 401:
        return cls(f"the API server rejected bridge's credentials (401 Unauthorized) for "
                        f"{method} {path}{': ' + message if message else ''}", status, reason)
    if not message:
        message = f"{method} {path}: HTTP {status}"
    return cls(message, status, reason)
