"""The HTTPS API server: Kubernetes REST paths, verbs, watch streams and subresources.

The HTTP edge only: it parses requests, authenticates and authorizes them, and renders
results and Status errors. The semantics live in registry.py; the data in store.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from . import protobuf, resources, tables
from .auth import ACCESS_REVIEW_PATH, UNAUTHORIZED, Authenticator, User, access_review, authorize
from .errors import ApiError, bad_request, method_not_allowed
from .patch import SUPPORTED as PATCH_TYPES
from .portforward import serve_portforward
from .registry import DeleteOptions, Registry
from .resources import Resource
from .selectors import predicate_for
from .store import Store

log = logging.getLogger("test-cluster.api")
Obj = dict[str, Any]
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})


class NodeLike(Protocol):
    async def dial(self, namespace: str, pod: str, port: int
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    def logs(self, namespace: str, pod: str, container: str | None = None, *,
             follow: bool = False, tail_lines: int | None = None, previous: bool = False,
             timestamps: bool = False, since_seconds: int | None = None
             ) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class Target:
    """What a resource path names."""
    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def error_response(err: ApiError) -> web.Response:
    return json_response(err.status(), err.code)


def _int_param(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"invalid value for {name}: {value!r}") from None


def _bool_param(query: Any, name: str) -> bool:
    return str(query.get(name, "")).lower() in ("1", "true", "yes")


def patch_type(request: web.Request) -> str:
    """The request's patch content type; 415 UnsupportedMediaType if it is none we apply."""
    ctype = request.content_type
    if ctype not in PATCH_TYPES:
        raise ApiError(415, "UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted "
                       f"media types include: {', '.join(PATCH_TYPES)}")
    return ctype


def parse_target(parts: list[str]) -> Target | None:
    """`parts` after the group/version prefix; None when it names no served resource."""
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if rest[:1] == ["watch"]:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and not (
            len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    r = resources.lookup(group, version, rest[0])
    if r is None or (namespace is not None and not r.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in r.subresources:
        return None
    return Target(r, namespace, name, sub)


class ApiServer:
    def __init__(self, store: Store, registry: Registry, authenticator: Authenticator,
                 node: NodeLike, server_address: str = "127.0.0.1:6443") -> None:
        self.store = store
        self.registry = registry
        self.auth = authenticator
        self.node = node
        self.server_address = server_address
        self.app = web.Application(middlewares=[self._middleware], client_max_size=16 << 20)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def listen(self, hosts: list[str], port: int, ssl_context: ssl.SSLContext) -> int:
        """Serve on every host at `port` (0: a free one, the same for all). Returns the port."""
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     handler_cancellation=True,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        for i, host in enumerate(hosts):
            site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context,
                               reuse_address=True)
            await site.start()
            if i == 0 and port == 0:
                server: Any = site._server
                port = server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- middleware ----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            if request.path not in PUBLIC_PATHS:
                peercert = None
                if request.transport is not None:
                    peercert = request.transport.get_extra_info("peercert")
                user = self.auth.authenticate(request.headers.get("Authorization"), peercert)
                if user is None:
                    return error_response(UNAUTHORIZED)
                request["user"] = user
            return await handler(request)
        except ApiError as err:
            return error_response(err)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error_response(bad_request(f"the body of the request could not be decoded: "
                                              f"{err}"))
        finally:
            if task is not None:
                self._streams.discard(task)

    # -- routing -------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        if request.method == "GET":
            doc = self._discovery(parts)
            if doc is not None:
                return json_response(doc)
            if path in PUBLIC_PATHS:
                return web.Response(text="ok")
        if request.method == "POST" and path == ACCESS_REVIEW_PATH:
            return json_response(access_review(request["user"], await self._body(request)), 201)
        target = parse_target(parts)
        if target is None:
            return error_response(ApiError(404, "NotFound",
                                           "the server could not find the requested resource",
                                           {}))
        user: User = request["user"]
        verb = self._verb(request, target)
        authorize(user, verb, target.resource.group, target.resource.plural,
                  target.subresource, target.namespace, target.name)
        if target.subresource == "portforward" and verb == "get":
            # The websocket upgrade is a GET, authorised as `get`; Kubernetes 1.35+
            # (AuthorizePodWebsocketUpgradeCreatePermission, on by default) also requires
            # `create`, which this cluster (v1.37) does too.
            authorize(user, "create", target.resource.group, target.resource.plural,
                      target.subresource, target.namespace, target.name)
        if target.subresource == "portforward":
            return await serve_portforward(request, self.store, self.node, target.namespace
                                           or "default", target.name or "")
        if target.subresource == "log":
            return await self._logs(request, target)
        if target.subresource == "scale":
            return await self._scale(request, target)
        handler = {
            ("GET", False): self._list, ("GET", True): self._get,
            ("POST", False): self._create, ("PUT", True): self._update,
            ("PATCH", True): self._patch, ("DELETE", True): self._delete,
            ("DELETE", False): self._delete_collection,
        }.get((request.method, target.name is not None))
        if handler is None:
            raise method_not_allowed()
        return await handler(request, target)

    @staticmethod
    def _verb(request: web.Request, target: Target) -> str:
        method = request.method
        if target.subresource == "portforward":
            return "create" if method == "POST" else "get"  # SPDY POST; websocket GET
        if method == "GET":
            if target.name is None:
                watching = _bool_param(request.query, "watch") or "/watch/" in request.path
                return "watch" if watching else "list"
            return "get"
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if target.name else "deletecollection"}.get(method, "get")

    def _discovery(self, parts: list[str]) -> Obj | None:
        if parts == ["version"]:
            return resources.version_info()
        if parts[:2] == ["openapi", "v3"]:
            if len(parts) == 2:
                return resources.openapi_v3_root()
            return resources.openapi_v3_document("/".join(parts[2:]))
        if parts == ["api"]:
            return resources.api_versions(self.server_address)
        if parts == ["apis"]:
            return resources.api_group_list()
        if len(parts) == 2 and parts[0] == "api":
            return resources.resource_list("", parts[1])
        if len(parts) == 2 and parts[0] == "apis":
            return resources.api_group(parts[1])
        if len(parts) == 3 and parts[0] == "apis":
            return resources.resource_list(parts[1], parts[2])
        return None

    # -- reads ---------------------------------------------------------------------------

    async def _get(self, request: web.Request, target: Target) -> web.StreamResponse:
        obj = self.store.get(target.resource.key, target.namespace, target.name or "")
        return self._render(request, target.resource, obj)

    async def _list(self, request: web.Request, target: Target) -> web.StreamResponse:
        r = target.resource
        predicate = predicate_for(request.query.get("labelSelector"),
                                  request.query.get("fieldSelector"), r.key)
        if _bool_param(request.query, "watch") or "/watch/" in request.path:
            return await self._watch(request, target, predicate)
        items, rv = self.store.list(r.key, target.namespace, predicate)
        if tables.wants_table(request.headers.get("Accept", "")):
            return json_response(tables.table(r, items, rv, request.query))
        # As Kubernetes serves typed lists: the items carry no kind/apiVersion of their own.
        bare = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")}
                for item in items]
        return json_response({"kind": f"{r.kind}List", "apiVersion": r.api_version,
                              "metadata": {"resourceVersion": rv}, "items": bare})

    def _render(self, request: web.Request, r: Resource, obj: Obj,
                status: int = 200) -> web.Response:
        if tables.wants_table(request.headers.get("Accept", "")):
            return json_response(tables.table(r, [obj], obj["metadata"].get(
                "resourceVersion", ""), request.query), status)
        return json_response(obj, status)

    async def _watch(self, request: web.Request, target: Target,
                     predicate: Callable[[Obj], bool]) -> web.StreamResponse:
        r = target.resource
        query = request.query
        since = query.get("resourceVersion", "")
        timeout = _int_param(query, "timeoutSeconds")
        initial = since in ("", "0") or _bool_param(query, "sendInitialEvents")
        want_table = tables.wants_table(request.headers.get("Accept", ""))
        bookmarks = _bool_param(query, "allowWatchBookmarks")
        backlog: list[Obj] = []
        if initial:
            backlog, since = self.store.list(r.key, target.namespace, predicate)
        try:
            self.store.check_since(since)
        except ApiError as e:
            if e.code != 410:
                raise
            # as Kubernetes' watch cache: a resourceVersion too old to watch from is a
            # watch that sends one ERROR event with the 410 Expired Status, then ends
            gone = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Transfer-Encoding": "chunked"})
            await gone.prepare(request)
            await gone.write((json.dumps({"type": "ERROR", "object": e.status()}) + "\n")
                             .encode())
            await gone.write_eof()
            return gone
        events = self.store.watch(r.key, target.namespace, since)
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Transfer-Encoding": "chunked"})
        await response.prepare(request)

        def encode(type_: str, obj: Obj) -> bytes:
            if want_table and type_ != "BOOKMARK":
                obj = tables.table(r, [obj], obj["metadata"].get("resourceVersion", ""),
                                   query)
            return (json.dumps({"type": type_, "object": obj}) + "\n").encode()

        async def stream() -> None:
            for obj in backlog:
                await response.write(encode("ADDED", obj))
            if _bool_param(query, "sendInitialEvents") and bookmarks:
                mark = {"kind": r.kind, "apiVersion": r.api_version, "metadata": {
                    "resourceVersion": since,
                    "annotations": {"k8s.io/initial-events-end": "true"}}}
                await response.write(encode("BOOKMARK", mark))
            async for event in events:
                old_match = event.prev is not None and predicate(event.prev)
                new_match = predicate(event.object)
                if event.type == "DELETED":
                    type_ = "DELETED" if new_match else ""
                elif new_match and not old_match:
                    type_ = "ADDED"
                elif new_match:
                    type_ = "MODIFIED"
                elif old_match:
                    type_ = "DELETED"
                else:
                    type_ = ""
                if type_:
                    await response.write(encode(type_, event.object))

        task = asyncio.ensure_future(stream())
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout) if timeout else await task
        except (TimeoutError, ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    # -- writes --------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if request.content_type == protobuf.CONTENT_TYPE:
            return protobuf.decode(raw)
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            ctype = request.content_type
            if "yaml" in ctype:
                import yaml
                return yaml.safe_load(raw)
            raise bad_request("the object provided is unrecognized (must be of type JSON)"
                              ) from None

    async def _create(self, request: web.Request, target: Target) -> web.StreamResponse:
        if target.subresource:
            raise method_not_allowed()
        body = await self._body(request)
        if body is None:
            raise bad_request("the body of the request was empty")
        dry = bool(request.query.get("dryRun"))
        obj = self.registry.create(target.resource.key, target.namespace, body, dry_run=dry)
        return self._render(request, target.resource, obj, 201)

    async def _update(self, request: web.Request, target: Target) -> web.StreamResponse:
        body = await self._body(request)
        dry = bool(request.query.get("dryRun"))
        obj = self.registry.update(target.resource.key, target.namespace, target.name or "",
                                   body, subresource=target.subresource, dry_run=dry)
        return self._render(request, target.resource, obj)

    async def _patch(self, request: web.Request, target: Target) -> web.StreamResponse:
        ctype = patch_type(request)
        body = await self._body(request)
        dry = bool(request.query.get("dryRun"))
        obj = self.registry.patch(target.resource.key, target.namespace, target.name or "",
                                  ctype, body, subresource=target.subresource, dry_run=dry)
        return self._render(request, target.resource, obj)

    def _delete_options(self, request: web.Request, body: Any) -> DeleteOptions:
        opts = body if isinstance(body, dict) else {}
        grace = opts.get("gracePeriodSeconds")
        if grace is None:
            grace = _int_param(request.query, "gracePeriodSeconds")
        preconditions = opts.get("preconditions") or {}
        return DeleteOptions(
            grace_period=grace,
            propagation=opts.get("propagationPolicy") or request.query.get("propagationPolicy")
            or (("Orphan" if opts["orphanDependents"] else None)
                if "orphanDependents" in opts else None),
            precondition_uid=preconditions.get("uid"),
            precondition_rv=preconditions.get("resourceVersion"),
            dry_run=bool(opts.get("dryRun") or request.query.get("dryRun")),
        )

    async def _delete(self, request: web.Request, target: Target) -> web.StreamResponse:
        if target.subresource:
            raise method_not_allowed()
        options = self._delete_options(request, await self._body(request))
        r = target.resource
        obj, finished = self.registry.delete(r.key, target.namespace, target.name or "",
                                             options)
        if r.key in ("pods", "services", "namespaces") or not finished:
            return json_response(obj)  # these return the object; others a Success Status
        details: Obj = {"name": obj["metadata"]["name"], "kind": r.plural,
                        "uid": obj["metadata"].get("uid")}
        if r.group:
            details["group"] = r.group
        return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Success", "details": details})

    async def _delete_collection(self, request: web.Request, target: Target
                                 ) -> web.StreamResponse:
        r = target.resource
        options = self._delete_options(request, await self._body(request))
        predicate = predicate_for(request.query.get("labelSelector"),
                                  request.query.get("fieldSelector"), r.key)
        items, _ = self.store.list(r.key, target.namespace, predicate)
        deleted = []
        for item in items:
            with contextlib.suppress(ApiError):
                deleted.append(self.registry.delete(r.key, item["metadata"].get("namespace"),
                                                    item["metadata"]["name"], options)[0])
        return json_response({"kind": f"{r.kind}List", "apiVersion": r.api_version,
                              "metadata": {"resourceVersion": self.store.resource_version},
                              "items": deleted})

    # -- subresources --------------------------------------------------------------------

    async def _scale(self, request: web.Request, target: Target) -> web.StreamResponse:
        key, ns, name = target.resource.key, target.namespace or "default", target.name or ""
        dry = bool(request.query.get("dryRun"))
        if request.method == "GET":
            return json_response(self.registry.get_scale(key, ns, name))
        if request.method == "PUT":
            body = await self._body(request)
            return json_response(self.registry.update_scale(key, ns, name, body, dry_run=dry))
        if request.method == "PATCH":
            ctype = patch_type(request)
            body = await self._body(request)
            return json_response(self.registry.patch_scale(key, ns, name, ctype, body,
                                                           dry_run=dry))
        raise method_not_allowed()

    async def _logs(self, request: web.Request, target: Target) -> web.StreamResponse:
        if request.method != "GET":
            raise method_not_allowed()
        ns, name = target.namespace or "default", target.name or ""
        self.store.get("pods", ns, name)
        q = request.query
        follow = _bool_param(q, "follow")
        limit_bytes = _int_param(q, "limitBytes")
        chunks = self.node.logs(
            ns, name, q.get("container") or None, follow=follow,
            tail_lines=_int_param(q, "tailLines"), previous=_bool_param(q, "previous"),
            timestamps=_bool_param(q, "timestamps"), since_seconds=_int_param(q, "sinceSeconds"))
        first = asyncio.ensure_future(anext(chunks))
        done, _ = await asyncio.wait({first}, timeout=0.5)
        if done and first.exception() is not None:
            exc = first.exception()
            if isinstance(exc, StopAsyncIteration):
                return web.Response(body=b"", content_type="text/plain")
            raise exc  # type: ignore[misc]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0
        pending: asyncio.Future[bytes] | None = first
        try:
            while pending is not None:
                try:
                    chunk = await pending
                except StopAsyncIteration:
                    break
                if limit_bytes is not None:
                    chunk = chunk[: max(0, limit_bytes - sent)]
                await response.write(chunk)
                sent += len(chunk)
                if limit_bytes is not None and sent >= limit_bytes:
                    break
                pending = asyncio.ensure_future(anext(chunks))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
            with contextlib.suppress(BaseException):
                await chunks.aclose()  # type: ignore[attr-defined]
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

