"""Start-up and shutdown of `python -m sidecar`: bad settings, SIGTERM, ports below 1024."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncssh
import pytest

from sidecar import protocol
from tests.sidecar.harness import (
    REPO,
    ClientKey,
    TagServer,
    base_env,
    free_ports,
    popen,
    running_sidecar,
    start_sidecar,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- bad settings


def _run_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def _good(key: ClientKey) -> dict[str, str]:
    ssh_port, health_port, fwd = free_ports(3)
    return {
        protocol.ENV_AUTHORIZED_KEY: key.public_line,
        protocol.ENV_PORTS: str(fwd),
        protocol.ENV_SSH_PORT: str(ssh_port),
        protocol.ENV_HEALTH_PORT: str(health_port),
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({protocol.ENV_AUTHORIZED_KEY: None}, "BRIDGE_AUTHORIZED_KEY is not set"),
        ({protocol.ENV_AUTHORIZED_KEY: "ssh-ed25519 bm90IGEga2V5"}, "not an OpenSSH public-key"),
        ({protocol.ENV_AUTHORIZED_KEY: "hello"}, "not an OpenSSH public-key line"),
        ({protocol.ENV_AUTHORIZED_KEY: "PRIVATE"}, "holds a private key"),
        ({protocol.ENV_PORTS: None}, "BRIDGE_PORTS is not set"),
        ({protocol.ENV_PORTS: "8080,http"}, "BRIDGE_PORTS entry must be a TCP port"),
        ({protocol.ENV_PORTS: "70000"}, "(1-65535), got '70000'"),
        ({protocol.ENV_SSH_PORT: "0"}, "BRIDGE_SSH_PORT must be a TCP port number"),
        ({protocol.ENV_HEALTH_PORT: "-1"}, "BRIDGE_HEALTH_PORT must be a TCP port number"),
        ({protocol.ENV_BIND: "localhost"}, "BRIDGE_BIND must be an IP address"),
        ({protocol.ENV_DRAIN_SECONDS: "soon"}, "BRIDGE_DRAIN_SECONDS must be a number"),
        ({protocol.ENV_DRAIN_SECONDS: "-1"}, "must be a number of seconds >= 0"),
        ("same-ports", "are both"),
        ("ssh-port-forwarded", "which the sidecar itself uses (BRIDGE_SSH_PORT)"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    key: ClientKey, tmp_path: Path, change: object, expected: str
) -> None:
    settings = _good(key)
    if change == "same-ports":
        settings[protocol.ENV_HEALTH_PORT] = settings[protocol.ENV_SSH_PORT]
    elif change == "ssh-port-forwarded":
        settings[protocol.ENV_PORTS] += "," + settings[protocol.ENV_SSH_PORT]
    else:
        assert isinstance(change, dict)
        for name, value in change.items():
            if value is None:
                settings.pop(name)
            elif value == "PRIVATE":
                settings[name] = key.key.export_private_key().decode().replace("\n", " ")
            else:
                settings[name] = value
    result = _run_with(base_env(**settings))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sidecar: bad settings: ")
    assert expected in lines[0]
    assert lines[0].endswith("nothing was started")
    if change == {protocol.ENV_AUTHORIZED_KEY: "PRIVATE"}:
        assert "PRIVATE KEY" not in lines[0].replace("holds a private key", "")


def test_ssh_port_in_use_is_a_clear_error(key: ClientKey) -> None:
    settings = _good(key)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", int(settings[protocol.ENV_SSH_PORT])))
        squatter.listen(1)
        result = _run_with(base_env(**settings))
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line == (
        f"sidecar: cannot listen for SSH on 127.0.0.1:{settings[protocol.ENV_SSH_PORT]}: "
        "Address already in use; nothing was started"
    )


# ---------------------------------------------------------------- SIGTERM


class _LostReason(asyncssh.SSHClient):
    """asyncssh reports a DISC_BY_APPLICATION disconnect as a clean close (exc None),
    unlike a dropped network (ConnectionLost); OpenSSH prints the reason text."""

    reason = "still connected"

    def connection_lost(self, exc: Exception | None) -> None:
        self.reason = "clean close by the server" if exc is None else repr(exc)


def test_sigterm_drains_open_connections_then_disconnects_and_exits_0(
    tmp_path: Path, key: ClientKey
) -> None:
    """An open forwarded connection keeps working after SIGTERM, until the drain bound;
    /ready is 503 meanwhile; then the client is told why and the process exits 0."""
    drain = 1.5
    sidecar = start_sidecar(
        tmp_path, key, extra_env={protocol.ENV_DRAIN_SECONDS: str(drain)}
    )
    try:
        port = sidecar.allowed[0]

        async def scenario() -> tuple[bytes, int, str]:
            catcher = _LostReason()
            async with TagServer(b"laptop") as laptop:
                conn = await sidecar.connect(key, client_factory=lambda: catcher)
                await conn.forward_remote_port("", port, "127.0.0.1", laptop.port)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"before ")
                await writer.drain()
                sidecar.terminate()
                await asyncio.to_thread(sidecar.wait_log, "shutting down")
                ready_status, _ = await asyncio.to_thread(sidecar.http, protocol.READY_PATH)
                # new connections to the forwarded port are no longer accepted
                with pytest.raises(OSError):
                    await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"after")  # the open connection still works during the drain
                writer.write_eof()
                answer = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                # this connection finished; hold nothing else open: the process must exit
                await asyncio.wait_for(conn.wait_closed(), 15)
                return answer, ready_status, catcher.reason

        answer, ready_status, reason = asyncio.run(scenario())
        assert answer == b"laptop:before after"
        assert ready_status == 503
        assert reason == "clean close by the server"
        assert sidecar.proc.wait(timeout=15) == 0
    finally:
        sidecar.stop()
    assert "stopped" in sidecar.log()


def test_sigterm_disconnects_openssh_with_the_reason(tmp_path: Path, key: ClientKey) -> None:
    with running_sidecar(tmp_path, key) as sidecar:
        port = sidecar.allowed[0]
        argv = sidecar.ssh_argv(
            key, "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"{port}:127.0.0.1:9",
            "developer@127.0.0.1",
        )
        with popen(argv) as ssh:
            sidecar.wait_ready(200)
            sidecar.terminate()
            assert sidecar.proc.wait(timeout=15) == 0
            _, err = ssh.communicate(timeout=15)
        assert "shutting down (SIGTERM)" in err


def test_sigterm_gives_up_on_a_stuck_connection_after_the_drain_bound(
    tmp_path: Path, key: ClientKey
) -> None:
    drain = 1.0
    with running_sidecar(
        tmp_path, key, extra_env={protocol.ENV_DRAIN_SECONDS: str(drain)}
    ) as sidecar:
        port = sidecar.allowed[0]

        async def scenario() -> str:
            async with TagServer(b"laptop") as laptop:
                conn = await sidecar.connect(key)
                await conn.forward_remote_port("", port, "127.0.0.1", laptop.port)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"never finished")  # no EOF: the tunnel stays open
                await writer.drain()
                sidecar.terminate()
                code = await asyncio.to_thread(sidecar.proc.wait, 20)
                writer.close()
                conn.close()
                return f"{code}"

        assert asyncio.run(scenario()) == "0"
        log = sidecar.log()
        assert f"waiting up to {drain:.1f}s for 1 open connection(s)" in log
        assert f"1 connection(s) still open after {drain:.1f}s; closing" in log


def test_sigterm_when_idle_exits_0(tmp_path: Path, key: ClientKey) -> None:
    sidecar = start_sidecar(tmp_path, key)
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=15) == 0
    sidecar.stop()


# ---------------------------------------------------------------- ports below 1024

# Root without CAP_NET_BIND_SERVICE is what a non-root container user amounts to here.
DROP_BIND_CAP = ["setpriv", "--bounding-set", "-net_bind_service"]

_PRIVILEGED_SCENARIO = textwrap.dedent(
    """
    import asyncio, json, os, sys
    sys.path.insert(0, os.environ["REPO"])
    from pathlib import Path
    from tests.sidecar.harness import make_key, start_sidecar, TagServer, exchange

    async def main(tmp, port):
        key = make_key(tmp, "id")
        sidecar = start_sidecar(tmp, key, [port], prefix=json.loads(os.environ["PREFIX"]))
        try:
            async with TagServer(b"low") as laptop:
                conn = await sidecar.connect(key)
                try:
                    await conn.forward_remote_port("", port, "127.0.0.1", laptop.port)
                    answer = (await exchange("127.0.0.1", port, b"hi")).decode()
                except Exception as exc:
                    answer = "refused: " + type(exc).__name__
                conn.close()
        finally:
            sidecar.stop()
        print(json.dumps({"answer": answer, "log": sidecar.log()}))

    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    """
)


def _privileged_run(tmp_path: Path, sysctl_start: int | None, port: int) -> dict[str, str]:
    """Run the scenario in a fresh network namespace (gone when the process ends), with the
    sidecar lacking CAP_NET_BIND_SERVICE and optionally a lowered ip_unprivileged_port_start."""
    work = tmp_path / f"scenario-{sysctl_start}"
    work.mkdir()
    setup = "ip link set lo up"
    if sysctl_start is not None:
        setup += f" && sysctl -q -w net.ipv4.ip_unprivileged_port_start={sysctl_start}"
    script = work / "scenario.py"
    script.write_text(_PRIVILEGED_SCENARIO)
    env = {**os.environ, "REPO": str(REPO), "PREFIX": json.dumps(DROP_BIND_CAP)}
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c",
         f'{setup} && exec "$0" "$@"', sys.executable, str(script), str(work), str(port)],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "sysctl", "setpriv", "ip")),
    reason="needs root, unshare, sysctl, setpriv and ip",
)


@needs_root_tools
def test_port_below_1024_fails_clearly_without_the_sysctl(tmp_path: Path) -> None:
    data = _privileged_run(tmp_path, None, 80)
    assert data["answer"] == "refused: ChannelListenError"
    assert (
        "cannot listen on port 80 (all interfaces): Permission denied; ports below 1024 need "
        "the pod sysctl net.ipv4.ip_unprivileged_port_start<=80"
    ) in data["log"]


@needs_root_tools
def test_port_below_1024_works_where_the_pod_sysctl_allows_it(tmp_path: Path) -> None:
    data = _privileged_run(tmp_path, 0, 80)
    assert data["answer"] == "low:hi", data["log"]
