"""bridge's agent tunnel in a process of its own, for the loopback tunnel path.

``python -m tests.equipment.bench.agent --port SSH_PORT --key-file KEY --host-key LINE
--forward REMOTE:HOST:PORT [--tuning JSON]`` connects
``bridge.transport.tunnel.Tunnel`` to a sidecar on
127.0.0.1, asks for the remote forward, prints ``forwarding`` and holds the tunnel until
SIGTERM. Its own process, so its CPU and RSS are the agent's alone, as in ``bridge swap``.

``--tuning`` sets knobs (``tests/equipment/bench/knobs.py``) before connecting; an unknown knob
makes it exit 2, so a sweep never measures a silent no-op.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import signal
import sys
from pathlib import Path

import asyncssh

from tests.equipment.bench import knobs
from tests.equipment.bench.server import raise_fd_limit


def write_client_key(directory: Path) -> tuple[Path, str]:
    """A fresh ed25519 client key as a private-key file, and its OpenSSH public-key line."""
    from bridge.transport.tunnel import new_client_key, public_key_line

    key = new_client_key()
    path = directory / "client_key"
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    return path, public_key_line(key)


async def run(args: argparse.Namespace) -> int:
    from bridge.transport.tunnel import Tunnel

    tuning = json.loads(args.tuning)
    try:
        knobs.apply(tuning, "agent")
        kwargs = knobs.connect_kwargs(tuning, inspect.signature(Tunnel.connect).parameters)
    except ValueError as exc:
        print(f"agent: {exc}", file=sys.stderr, flush=True)
        return 2
    remote, local_host, local_port = args.forward.split(":")
    key = asyncssh.read_private_key(args.key_file)
    tunnel = await Tunnel.connect(host="127.0.0.1", port=args.port, client_key=key,
                                  host_key=args.host_key, **kwargs)
    try:
        await tunnel.forward(int(remote), local_host, int(local_port))
        # What was negotiated and set, read back to show it (never to steer it).
        conn = getattr(tunnel, "_conn", None)
        cipher = conn.get_extra_info("send_cipher") if conn is not None else "unknown"
        window = getattr(tunnel, "_window", "unknown")
        pktsize = getattr(tunnel, "_max_pktsize", "unknown")
        print(f"forwarding cipher {cipher}, agent window {window}, packets {pktsize}",
              flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        closed = asyncio.ensure_future(tunnel.wait_closed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
        for f in (closed, stopped):
            f.cancel()
        if closed.done() and not stopped.done():
            print("tunnel closed by the sidecar", file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        await tunnel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--forward", required=True, help="REMOTE_PORT:LOCAL_HOST:LOCAL_PORT")
    parser.add_argument("--tuning", default="{}",
                        help="JSON of knobs (tests/equipment/bench/knobs.py)")
    parser.add_argument("--log-level", default="WARNING", help="asyncssh log level")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="agent: %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(args.log_level)
    raise_fd_limit()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
