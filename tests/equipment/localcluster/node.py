"""The node of the local test cluster: host network, kubelet and ClusterIP service proxy behind
the narrow interface the API server uses (start/stop, dial for port-forward, container logs)."""

from __future__ import annotations

import asyncio
import functools
import shutil
from collections.abc import AsyncIterator

from . import dns
from .config import ClusterConfig
from .errors import bad_request, not_found
from .kubelet import Kubelet
from .network import Network, connect_localhost, run_in_netns
from .serviceproxy import ServiceProxy
from .store import Store

DIAL_TIMEOUT = 5.0


class Node:
    def __init__(self, store: Store, config: ClusterConfig) -> None:
        self.store = store
        self.config = config
        self.network = Network(config)
        self.kubelet = Kubelet(store, config, self.network)
        self.proxy = ServiceProxy(store, self.network)
        self.dns = dns.DnsServer(  # cluster DNS on the gateway address (issue 10)
            lambda: store.list("services")[0], lambda: store.list("endpoints")[0],
            str(config.gateway))
        self._started = False

    async def start(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self._started = True
        await self.network.start()
        await self.proxy.start()
        await self.dns.start()
        await self.kubelet.start()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            await self.kubelet.stop()
            await self.proxy.stop()
            await self.dns.stop()
        finally:
            await self.network.stop()
            shutil.rmtree(self.config.state_dir, ignore_errors=True)

    async def dial(
        self, namespace: str, pod: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TCP connect to localhost:port inside the pod's network namespace."""
        worker = self.kubelet.worker(namespace, pod)
        if worker is None or worker.sandbox is None:
            raise ConnectionError(f'pod "{pod}" in namespace "{namespace}" has no running sandbox')
        netns = worker.sandbox.netns
        try:
            connect = functools.partial(connect_localhost, port, DIAL_TIMEOUT)
            sock = await run_in_netns(netns, connect)
        except OSError as exc:
            raise ConnectionError(  # worded like the kubelet; the API server adds the prefix
                f'failed to connect to localhost:{port} inside namespace "{netns}", {exc}'
            ) from exc
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return reader, writer

    def logs(
        self,
        namespace: str,
        pod: str,
        container: str | None = None,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        previous: bool = False,
        timestamps: bool = False,
        since_seconds: int | None = None,
    ) -> AsyncIterator[bytes]:
        """The container's output as the kubelet keeps it. Raises ApiError at once (not when
        iterated) for a missing pod, a missing or ambiguous container, or no such instance."""
        obj = self.store.try_get("pods", namespace, pod)
        if obj is None:
            raise not_found("pods", pod)
        spec = obj.get("spec", {})
        names = [c["name"] for c in spec.get("containers") or []]
        init_names = [c["name"] for c in spec.get("initContainers") or []]
        if container is None:
            if len(names) != 1:
                message = (
                    f"a container name must be specified for pod {pod}, "
                    f"choose one of: [{' '.join(names)}]"
                )
                if init_names:
                    message += f" or one of the init containers: [{' '.join(init_names)}]"
                raise bad_request(message)
            container = names[0]
        if container not in names + init_names:
            raise bad_request(f"container {container} is not valid for pod {pod}")
        worker = self.kubelet.worker(namespace, pod)
        runtime = worker.container(container) if worker is not None else None
        if runtime is None:
            raise bad_request(
                f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating'
            )
        # As the kubelet: --previous is the instance in lastState.terminated, which is the one
        # that just ended while the container waits to be restarted.
        if previous:
            in_backoff = "waiting" in runtime.state and runtime.instance is None
            target = (runtime.log if in_backoff else runtime.previous_log) \
                if runtime.last_state else None
        else:
            target = runtime.log
        if target is None:
            if previous:
                raise bad_request(
                    f'previous terminated container "{container}" in pod "{pod}" not found'
                )
            reason = runtime.state.get("waiting", {}).get("reason", "ContainerCreating")
            raise bad_request(
                f'container "{container}" in pod "{pod}" is waiting to start: {reason}'
            )
        return target.read(
            follow=follow, tail_lines=tail_lines, timestamps=timestamps,
            since_seconds=since_seconds,
        )
