"""A minimal Debug Adapter Protocol client, to play an IDE's part against debugpy in tests.

DAP messages are JSON bodies framed like HTTP: `Content-Length: N\\r\\n\\r\\n` then N bytes,
over one TCP connection to the adapter (`python -m debugpy --listen HOST:PORT`). A reader
thread collects every message; `request()` sends one and `response()`/`event()` wait (bounded)
for what answers it. The attach sequence is the one VS Code uses for a `--listen` adapter.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

WAIT = 60.0


class DapError(AssertionError):
    pass


class DapClient:
    def __init__(self, host: str, port: int, connect_timeout: float = WAIT) -> None:
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(None)
        self.seq = 0
        self.messages: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True, name="dap-reader").start()

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = None
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length is None:
                    raise DapError(f"DAP header without Content-Length: {head!r}")
                while len(buf) < length:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                with self.cond:
                    self.messages.append(json.loads(body))
                    self.cond.notify_all()
        except OSError:
            return
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, command: str, **arguments: Any) -> int:
        self.seq += 1
        self.send({"seq": self.seq, "type": "request", "command": command,
                   "arguments": arguments})
        return self.seq

    def _wait(self, what: str, match: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, msg in enumerate(self.messages):
                    if match(msg):
                        return self.messages.pop(i)
                if self.closed:
                    raise DapError(f"the adapter closed the connection before {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DapError(f"no {what} within {timeout:g}s; got {self.messages!r}")
                self.cond.wait(left)

    def response(self, seq: int, timeout: float = WAIT) -> dict[str, Any]:
        msg = self._wait(f"response to request {seq}",
                         lambda m: m.get("type") == "response" and m.get("request_seq") == seq,
                         timeout)
        if not msg.get("success"):
            raise DapError(f"{msg.get('command')} failed: {msg.get('message')} {msg!r}")
        body: dict[str, Any] = msg.get("body") or {}
        return body

    def call(self, command: str, timeout: float = WAIT, **arguments: Any) -> dict[str, Any]:
        return self.response(self.request(command, **arguments), timeout)

    def event(self, name: str, timeout: float = WAIT) -> dict[str, Any]:
        msg = self._wait(f"event {name!r}",
                         lambda m: m.get("type") == "event" and m.get("event") == name, timeout)
        body: dict[str, Any] = msg.get("body") or {}
        return body

    def attach(self, breakpoints: dict[str, list[int]]) -> dict[str, list[dict[str, Any]]]:
        """VS Code's sequence for attaching to `debugpy --listen`: initialize, attach, (the
        initialized event) breakpoints, configurationDone; the breakpoints as set."""
        self.call("initialize", clientID="bridge-tests", adapterID="debugpy",
                  pathFormat="path", linesStartAt1=True, columnsStartAt1=True,
                  supportsVariableType=True, supportsRunInTerminalRequest=False)
        attach = self.request("attach", justMyCode=True, subProcess=False)
        self.event("initialized")
        set_: dict[str, list[dict[str, Any]]] = {}
        for path, lines in breakpoints.items():
            set_[path] = self.call("setBreakpoints", source={"path": path},
                                   breakpoints=[{"line": n} for n in lines])["breakpoints"]
        self.call("setExceptionBreakpoints", filters=[])
        self.call("configurationDone")
        self.response(attach)
        return set_

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
