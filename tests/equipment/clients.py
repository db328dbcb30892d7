"""Clients of a test cluster (either one), driven from the tests: kubectl (`Kubectl`, and
`kubectl port-forward` as a context manager) and the official Python client, each given the
cluster's kubeconfig."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
KUBECTL = str(VENV_BIN / "kubectl") if (VENV_BIN / "kubectl").exists() else "kubectl"
FORWARD_TIMEOUT = 30.0  # bound on waiting for kubectl's "Forwarding from" lines / its exit


@dataclass
class Kubectl:
    kubeconfig: str

    @property
    def cache_dir(self) -> str:
        """kubectl's discovery/HTTP cache, beside the kubeconfig (not in ~/.kube/cache)."""
        return str(Path(self.kubeconfig).parent / "kubectl-cache")

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run kubectl; with check=True a non-zero exit fails the test showing stderr."""
        result = subprocess.run(
            [KUBECTL, "--kubeconfig", self.kubeconfig, "--cache-dir", self.cache_dir, *args],
            input=input, capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 60.0) -> str:
        return self.run(*args, input=input, check=check, timeout=timeout).stdout


def official_client(kubeconfig: str) -> Iterator[object]:
    """The official (sync) client's ApiClient for the kubeconfig's current-context, closed
    when the generator ends (the body of every `api_client` fixture)."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=kubeconfig)
    try:
        yield client
    finally:
        client.close()


@dataclass
class Forward:
    """A running `kubectl port-forward`: its local ports by remote port, and its output."""
    process: subprocess.Popen[str]
    local: dict[int, int] = field(default_factory=dict)
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def wait_exit(self) -> int:
        return self.process.wait(timeout=FORWARD_TIMEOUT)


@contextlib.contextmanager
def kubectl_port_forward(kubectl: Kubectl, namespace: str, target: str,
                         *remote_ports: int) -> Iterator[Forward]:
    """`kubectl port-forward TARGET :P...` (kubectl picks free local ports); returns once it
    printed a "Forwarding from 127.0.0.1:L -> P" line for every port; stopped afterwards."""
    proc = subprocess.Popen(
        [KUBECTL, "--kubeconfig", kubectl.kubeconfig, "--cache-dir", kubectl.cache_dir,
         "-n", namespace, "port-forward", "--address", "127.0.0.1", target,
         *[f":{p}" for p in remote_ports]],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    forward = Forward(proc)
    all_listening = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            forward.stdout.append(line)
            m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
            if m:
                forward.local[int(m.group(2))] = int(m.group(1))
                if set(forward.local) == set(remote_ports):
                    all_listening.set()
        all_listening.set()  # kubectl ended: unblock the waiter

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            forward.stderr.append(line)

    readers = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()
    try:
        all_listening.wait(FORWARD_TIMEOUT)
        if set(forward.local) != set(remote_ports):
            raise AssertionError(f"kubectl port-forward did not start: {forward.stdout} "
                                 f"{forward.stderr}")
        yield forward
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for reader in readers:
            reader.join(timeout=10)
