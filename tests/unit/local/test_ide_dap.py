"""The test DAP client (tests/equipment/dap.py) against the real debugpy: a breakpoint in an HTTP
handler stops a request, an expression is evaluated in that frame, continue answers it."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.equipment.dap import DapClient
from tests.helpers import http_server

APP = http_server("""
secret = os.environ["SECRET_VALUE"]
body = f"answer {secret}\\n".encode()  # BREAK
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def break_line(source: str) -> int:
    return next(i for i, ln in enumerate(source.splitlines(), 1) if "# BREAK" in ln)


def test_dap_client_drives_debugpy(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    dap_port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "debugpy", "--listen", f"127.0.0.1:{dap_port}",
         "--wait-for-client", str(app), str(http_port)],
        env={"PATH": "/usr/bin:/bin", "SECRET_VALUE": "it's $ecret"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dap = DapClient("127.0.0.1", dap_port)
    try:
        line = break_line(APP)
        bps = dap.attach({str(app): [line]})
        assert bps[str(app)][0]["verified"] is True
        answer: list[bytes] = []

        def client() -> None:
            with socket.create_connection(("127.0.0.1", http_port), timeout=60) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                answer.append(data)

        # the app listens once debugpy lets it run
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
                break
            except OSError:
                threading.Event().wait(0.1)
        t = threading.Thread(target=client, daemon=True)
        t.start()
        stopped = dap.event("stopped")
        assert stopped["reason"] == "breakpoint"
        frame = dap.call("stackTrace", threadId=stopped["threadId"])["stackFrames"][0]
        assert (Path(frame["source"]["path"]).resolve(), frame["line"]) == (app.resolve(), line)
        got = dap.call("evaluate", expression="os.environ['SECRET_VALUE']",
                       frameId=frame["id"], context="repl")
        assert got["result"] == repr("it's $ecret")
        assert answer == []  # the request waits on the breakpoint
        dap.call("continue", threadId=stopped["threadId"])
        t.join(60)
        assert answer and answer[0].endswith(b"\r\n\r\nanswer it's $ecret\n")
    finally:
        dap.close()
        proc.kill()
        proc.wait(10)
