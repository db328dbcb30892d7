"""Container probes as the kubelet runs them: one check (httpGet, tcpSocket, exec) and the
threshold bookkeeping that turns a series of checks into a result.

httpGet and tcpSocket connect from the host to the pod IP (as the kubelet does); exec runs the
command inside the pod's network namespace with the container's environment (the caller passes
the runner). Defaults as in the Kubernetes API: timeoutSeconds 1, periodSeconds 10,
successThreshold 1, failureThreshold 3, initialDelaySeconds 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
ExecRunner = Callable[[list[str], float], Awaitable[tuple[int, bytes]]]

USER_AGENT = "kube-probe/1.30"


@dataclass(frozen=True)
class ProbeTiming:
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def of(cls, probe: Obj) -> ProbeTiming:
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds") or 0),
            period=float(probe.get("periodSeconds") or 10),
            timeout=float(probe.get("timeoutSeconds") or 1),
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )


class Threshold:
    """Consecutive results -> the probe's verdict (None until a threshold is first reached)."""

    def __init__(self, timing: ProbeTiming, initial: bool | None = None) -> None:
        self.timing = timing
        self.verdict = initial
        self._successes = 0
        self._failures = 0

    def record(self, ok: bool) -> bool | None:
        if ok:
            self._successes += 1
            self._failures = 0
            if self._successes >= self.timing.success_threshold:
                self.verdict = True
        else:
            self._failures += 1
            self._successes = 0
            if self._failures >= self.timing.failure_threshold:
                self.verdict = False
        return self.verdict


def resolve_port(port: int | str, container: Obj) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"port {port!r} is not a named port of container {container.get('name')!r}")


async def check(
    probe: Obj, container: Obj, pod_ip: str, run_exec: ExecRunner
) -> tuple[bool, str]:
    """Run one probe once: (succeeded, message for a failure)."""
    timeout = ProbeTiming.of(probe).timeout
    try:
        if "httpGet" in probe:
            return await asyncio.wait_for(_http(probe["httpGet"], container, pod_ip), timeout)
        if "tcpSocket" in probe:
            return await asyncio.wait_for(_tcp(probe["tcpSocket"], container, pod_ip), timeout)
        if "exec" in probe:
            code, output = await run_exec(list(probe["exec"].get("command") or []), timeout)
            text = output.decode(errors="replace").strip()
            return code == 0, f"command exited with {code}: {text}" if code else ""
        return False, "unsupported probe handler (the test cluster runs httpGet, tcpSocket, exec)"
    except TimeoutError:
        return False, f"timeout after {timeout:g}s"
    except (OSError, ValueError) as exc:
        return False, str(exc)


async def _tcp(action: Obj, container: Obj, pod_ip: str) -> tuple[bool, str]:
    host = action.get("host") or pod_ip
    port = resolve_port(action["port"], container)
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def _http(action: Obj, container: Obj, pod_ip: str) -> tuple[bool, str]:
    host = action.get("host") or pod_ip
    port = resolve_port(action["port"], container)
    path = action.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    tls: ssl.SSLContext | None = None
    if (action.get("scheme") or "HTTP").upper() == "HTTPS":
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    headers = {"Host": f"{host}:{port}", "User-Agent": USER_AGENT, "Accept": "*/*"}
    for header in action.get("httpHeaders") or []:
        headers[header["name"]] = header["value"]
    headers["Connection"] = "close"
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write((request + "\r\n").encode())
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.decode(errors="replace").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"HTTP probe got no valid response from {host}:{port}{path}"
    code = int(parts[1])
    if 200 <= code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"
