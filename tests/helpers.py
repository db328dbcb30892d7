"""Small helpers shared across the test packages (no fixtures: those live in conftest.py)."""

from __future__ import annotations

import signal
import struct
import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM a running process, and SIGKILL it if it has not exited within `grace` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def http_server(body: str, *, host: str = "127.0.0.1", ports: str = "sys.argv[1:]",
                prelude: str = "", after: str = "", ready: str = "", then: str = "",
                http11: bool = False, host_expr: str = "", methods: str = "") -> str:
    """The source of a small threaded HTTP server, for `python -c` (on the laptop, or as a
    pod's command): the one copy of what the tests' servers share.

    body     statements of do_GET that set `body` (bytes); `self` and `port` (the port this
             server listens on) are in scope; a `return` answers on its own terms
    host     the address to listen on ("" every IPv4 address; an IPv6 one listens IPv6 only)
    host_expr  an expression for the address instead (e.g. read from the environment)
    ports    an expression giving the ports (strings or ints) to listen on, one server each
    prelude  statements before the server (imports, globals, signal handlers)
    after    statements of do_GET after the answer was sent (e.g. exit on /exit/N)
    ready    statements once every server listens (e.g. print a line the test waits for)
    then     statements to run with the servers in the background; without them the first
             server serves in the foreground
    methods  more methods of the handler class (e.g. do_POST)
    """
    def indent(code: str, n: int) -> str:
        return "\n".join(" " * n + line if line.strip() else line
                         for line in code.strip("\n").splitlines())

    serve = ("for s in servers:\n    threading.Thread(target=s.serve_forever, daemon=True)"
             ".start()\n" + (ready.strip("\n") + "\n" if ready else "") + then.strip("\n")
             if then else
             "for s in servers[1:]:\n    threading.Thread(target=s.serve_forever, daemon=True)"
             ".start()\n" + (ready.strip("\n") + "\n" if ready else "")
             + "servers[0].serve_forever()")
    return f"""\
import http.server, json, os, signal, socket, sys, threading, time
{prelude.strip(chr(10))}
HOST = {host_expr or repr(host)}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = {"HTTP/1.1" if http11 else "HTTP/1.0"!r}
    def do_GET(self):
        port = self.server.server_address[1]
{indent(body, 8)}
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
{indent(after, 8) if after.strip() else ""}
{indent(methods, 4) if methods.strip() else ""}
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = socket.AF_INET6 if ":" in HOST else socket.AF_INET
    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()
servers = [S((HOST, int(p)), H) for p in {ports}]
{serve}
"""


# An attacker's host key line, and how a peer sends text before any key exchange (the sidecar's
# and the end-to-end security tests).
FORGED_KEY = "ssh-ed25519 " + "A" * 68


def disconnect_packet(reason: str) -> bytes:
    """An SSH_MSG_DISCONNECT in the clear (before key exchange), as any peer may send it."""
    text = reason.encode()
    payload = bytes([1]) + struct.pack(">I", 2) + struct.pack(">I", len(text)) + text + \
        struct.pack(">I", 0)
    padding = 8 - (len(payload) + 5) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">IB", len(payload) + padding + 1, padding) + payload + bytes(padding)
