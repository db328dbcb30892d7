"""HTTP proxy requests (CONNECT and absolute-form forwarding), as pure functions of bytes.

`parse_head` reads one request head; `origin_head` rewrites an absolute-form request for the
origin server (origin-form target, no proxy headers, `Connection: close` so each proxied
connection carries one request and a keep-alive client cannot send the next one, perhaps for
another host, down the same tunnel).
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024


class BadRequest(ValueError):
    """Not a request this proxy can serve; str() is the reason for the 400 page."""


@dataclass(frozen=True)
class Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def parse_head(buf: bytes) -> tuple[Head, int] | None:
    """The request head and its length, or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest("request head too large")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(f"not an HTTP request line: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadRequest(f"bad header line: {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return Head(parts[0].upper(), parts[1], parts[2], headers), end + 4


def authorized(head: Head, user: str, password: str) -> bool:
    """`Proxy-Authorization: Basic` with this session's credentials."""
    value = head.header("Proxy-Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(given, f"{user}:{password}".encode())


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    host, port = text, default_port
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise BadRequest(f"bad host {text[:80]!r}")
        host, rest = text[1:close], text[close + 1:]
        if rest.startswith(":"):
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p)
    if not host:
        raise BadRequest("no host")
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadRequest(f"bad port {text[:10]!r}")
    return int(text)


def connect_target(head: Head) -> tuple[str, int]:
    """CONNECT host:port."""
    if ":" not in head.target:
        raise BadRequest("CONNECT needs host:port")
    return split_host_port(head.target, 443)


def forward_target(head: Head) -> tuple[str, int, bytes]:
    """For an absolute-form request: (host, port, the head to send to the origin)."""
    url = urlsplit(head.target)
    if url.scheme != "http" or not url.netloc:
        raise BadRequest(f"only http:// URLs are forwarded (got {head.target[:80]!r}); "
                         "use CONNECT for https")
    host, port = split_host_port(url.netloc.rpartition("@")[2], 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    drop = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}
    lines = [f"{head.method} {path} {head.version}"]
    lines += [f"{k}: {v}" for k, v in head.headers if k.lower() not in drop]
    if head.header("Host") is None:
        lines.append(f"Host: {url.netloc.rpartition('@')[2]}")
    lines.append("Connection: close")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(status: int, reason: str, body: str = "", extra: str = "") -> bytes:
    data = body.encode()
    return (f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
