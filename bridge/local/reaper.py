"""The watcher that keeps the command from outliving bridge:
`python -m bridge.local.reaper PID SINCE`.

bridge starts it next to the command, in a session of its own, with a pipe on its stdin. When
bridge ends normally it writes `done` and the watcher exits. When the pipe closes without it
(bridge died, even by SIGKILL), the watcher stops the command's tree: every process of the
command's session (session id PID, created since SINCE) and their descendants get SIGTERM, and
SIGKILL after GRACE. The command itself also has PR_SET_PDEATHSIG (see runner.py).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

GRACE = 1.0
DONE = b"done"


def tree(pid: int, since: float) -> list[psutil.Process]:
    """Processes of the session `pid` started since `since`, and their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if os.getsid(proc.pid) == pid and proc.create_time() >= since:
                found[proc.pid] = proc
                for sub in proc.children(recursive=True):
                    found.setdefault(sub.pid, sub)
        except (OSError, psutil.Error):
            continue
    return list(found.values())


def stop_tree(pid: int, since: float, grace: float = GRACE) -> None:
    procs = tree(pid, since)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive + tree(pid, since):
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def main(argv: list[str]) -> int:
    pid, since = int(argv[0]), float(argv[1])
    data = b""
    while True:
        try:
            chunk = os.read(0, 64)
        except InterruptedError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    if data.endswith(DONE):
        return 0
    stop_tree(pid, since)
    return 0


if __name__ == "__main__":
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)  # only bridge's end matters
    time.sleep(0)
    sys.exit(main(sys.argv[1:]))
