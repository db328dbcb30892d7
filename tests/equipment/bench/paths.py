"""The ways the benchmark reaches the workload server, each set up and torn down here.

- ``limit``: the client straight to the server over loopback;
- ``openssh``: stock ``ssh -N -R`` to an ``sshd`` this module starts on 127.0.0.1 with its own
  config, host key and authorized key in a temporary directory;
- ``tunnel``: bridge's agent tunnel (``bridge.transport.tunnel.Tunnel`` in its own process, see
  ``tests/equipment/bench/agent.py``) to a real sidecar subprocess (``python -m sidecar``) over
  loopback.

The cluster path lives in ``tests/equipment/bench/cluster.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import knobs, procs

REPO = Path(__file__).resolve().parents[3]
SSHD = "/usr/sbin/sshd"
SETUP_TIMEOUT = 30.0

# OpenSSH's name for the cipher bridge prefers, so the reference runs the same cipher.
OPENSSH_CIPHER = "aes128-gcm@openssh.com"


@dataclass
class Endpoint:
    """Where the clients connect for one path, and which processes carry it (role -> pid)."""

    name: str
    host: str
    port: int
    # role ("agent", "sidecar", "ssh", "sshd") -> (pid, count its descendants too)
    processes: dict[str, tuple[int, bool]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    carriers: list[procs.Proc] = field(default_factory=list)  # must stay alive

    def dead(self) -> str:
        """Empty while every carrier runs, else which one ended and its last output."""
        for p in self.carriers:
            if not p.alive():
                return f"{p.name} exited {p.popen.returncode}; last output: {p.tail(4)}"
        return ""


@contextlib.contextmanager
def workload_server(host: str = "127.0.0.1", body: str = "ok\n") -> Iterator[procs.Proc]:
    server = procs.Proc(
        "workload-server",
        [sys.executable, str(REPO / "tests" / "equipment" / "bench" / "server.py"), "--host", host,
         "--port", "0", "--body", body],
        env=procs.python_env(),
    )
    with procs.running(server):
        line = server.wait_line(lambda s: s.startswith("listening "), SETUP_TIMEOUT)
        server.port = int(line.split()[1])
        yield server


@contextlib.contextmanager
def limit(server_port: int) -> Iterator[Endpoint]:
    yield Endpoint("limit", "127.0.0.1", server_port, notes=["plain loopback TCP"])


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def sshd_config(*, port: int, host_key: Path, authorized_keys: Path) -> str:
    return "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PidFile none",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "AllowTcpForwarding remote",
        "GatewayPorts no",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "PrintMotd no",
        "UseDNS no",
        "MaxStartups 100:30:200",
        "LogLevel ERROR",
        "",
    ])


@contextlib.contextmanager
def openssh(server_port: int, workdir: Path, cipher: str | None = OPENSSH_CIPHER
            ) -> Iterator[Endpoint]:
    """``sshd -D -e -f cfg`` on 127.0.0.1 and ``ssh -N -R`` from the stock client."""
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh") is None:
        raise RuntimeError("OpenSSH is not installed (Debian openssh-server and openssh-client)")
    if os.geteuid() != 0:
        raise RuntimeError("the OpenSSH reference needs root (sshd privilege separation)")
    d = Path(tempfile.mkdtemp(prefix="openssh-", dir=workdir))
    host_pub = _keygen(d / "host_key")
    client_pub = _keygen(d / "client_key")
    (d / "authorized_keys").write_text(client_pub + "\n")
    ssh_port = procs.free_port()
    (d / "sshd_config").write_text(sshd_config(
        port=ssh_port, host_key=d / "host_key", authorized_keys=d / "authorized_keys"))
    (d / "known_hosts").write_text(f"[127.0.0.1]:{ssh_port} {host_pub}\n")
    # sshd refuses to start without its privilege separation directory (systemd makes it).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = procs.Proc("sshd", [SSHD, "-D", "-e", "-f", str(d / "sshd_config")])
    with procs.running(sshd):
        procs.wait_port_open("127.0.0.1", ssh_port, SETUP_TIMEOUT, sshd)
        remote_port = procs.free_port()
        argv = [
            "ssh", "-F", "/dev/null", "-N", "-T",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes",
            "-o", "ExitOnForwardFailure=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-i", str(d / "client_key"),
            "-p", str(ssh_port), "-R", f"127.0.0.1:{remote_port}:127.0.0.1:{server_port}",
        ]
        if cipher:
            argv += ["-o", f"Ciphers={cipher}"]
        ssh = procs.Proc("ssh -R", [*argv, "root@127.0.0.1"])
        with procs.running(ssh):
            procs.wait_port("127.0.0.1", remote_port, SETUP_TIMEOUT)
            yield Endpoint(
                "openssh", "127.0.0.1", remote_port,
                processes={"client": (ssh.pid, False), "server": (sshd.pid, True)},
                notes=[f"OpenSSH ssh -R, cipher {cipher or 'default (chacha20-poly1305)'}"],
                carriers=[sshd, ssh],
            )


@contextlib.contextmanager
def tunnel(server_port: int, workdir: Path, tuning: Mapping[str, object] | None = None
           ) -> Iterator[Endpoint]:
    """A real sidecar subprocess and bridge's Tunnel (in tests/equipment/bench/agent.py) over
    loopback."""
    from . import agent

    d = Path(tempfile.mkdtemp(prefix="tunnel-", dir=workdir))
    key_file, pub_line = agent.write_client_key(d)
    ssh_port, health_port, remote_port = (procs.free_port() for _ in range(3))
    # The benchmark proper runs the sidecar untouched; a tuning sweep sets its knobs first.
    module = "tests.equipment.bench.sidecar_tuned" if tuning else "sidecar"
    sidecar = procs.Proc(
        "sidecar", [sys.executable, "-m", module], cwd=str(REPO),
        env=procs.python_env({
            **({knobs.ENV: json.dumps(dict(tuning))} if tuning else {}),
            "BRIDGE_AUTHORIZED_KEY": pub_line, "BRIDGE_PORTS": str(remote_port),
            "BRIDGE_SSH_PORT": str(ssh_port), "BRIDGE_HEALTH_PORT": str(health_port),
            "BRIDGE_BIND": "127.0.0.1",
        }),
    )
    with procs.running(sidecar):
        host_key = sidecar.wait_line(lambda s: s.startswith("host-key: "), SETUP_TIMEOUT)
        host_key = host_key.removeprefix("host-key: ").strip()
        procs.wait_port_open("127.0.0.1", ssh_port, SETUP_TIMEOUT, sidecar)
        agent_proc = procs.Proc(
            "agent", [sys.executable, "-m", "tests.equipment.bench.agent", "--port", str(ssh_port),
                      "--key-file", str(key_file), "--host-key", host_key,
                      "--forward", f"{remote_port}:127.0.0.1:{server_port}",
                      "--tuning", json.dumps(dict(tuning or {}))],
            cwd=str(REPO), env=procs.python_env(),
        )
        with procs.running(agent_proc):
            ready = agent_proc.wait_line(lambda s: s.startswith("forwarding"), SETUP_TIMEOUT)
            procs.wait_port("127.0.0.1", remote_port, SETUP_TIMEOUT)
            yield Endpoint(
                "tunnel", "127.0.0.1", remote_port,
                processes={"client": (agent_proc.pid, False), "server": (sidecar.pid, False)},
                notes=["bridge Tunnel (own process) -> sidecar subprocess over loopback TCP, "
                       + ready.removeprefix("forwarding").strip()
                       + (f", tuning {dict(tuning)}" if tuning else "")],
                carriers=[sidecar, agent_proc],
            )
