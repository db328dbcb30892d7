"""The fault suite: `bridge swap` driven through the faults a laptop sees, outcomes counted.

Set-up (``Bench``): a local test cluster (started here, or an existing one's kubeconfig), a
namespace with the e2e sample workload (``hello``: 2 replicas answering ``cluster ...``, a
Service on port 80), Toxiproxy between bridge and the API server (bridge gets a kubeconfig
through it; the harness's own kubectl goes direct), and a snapshot of the namespace.

Each run starts from that snapshot and must end at it again:

- link faults (reset mid-transfer, stalls, 64 kbit/s, API server unreachable) and pod faults
  (proxy pod deleted, sidecar killed) run against ``bridge swap hello --port http:P --
  <workload server answering laptop>`` (command mode): traffic must come back by itself, the
  command never restarted, then Ctrl-C restores;
- ``SIGKILL`` runs kill ``bridge swap`` (attach mode) at a random point of its set-up, or of its
  restore after Ctrl-C, then repair with ``bridge restore hello`` or with the next ``bridge
  swap`` (alternately), which must leave the namespace as it was.

"API server restart" cannot be the real thing on the local test cluster: it keeps its state in
memory, so a restart loses every object. It is emulated at the link (every connection to the
API server closed, new ones refused for 5 s), which is what the laptop sees of a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from bridge.model import state
from tests.equipment.bench import cluster as bench_cluster
from tests.equipment.bench import procs, toxiproxy, wan
from tests.equipment.workload import workload_manifest

from . import probe
from .counts import Run

REPO = Path(__file__).resolve().parents[3]
NAME = "hello"
REPLICAS = 2
UP_TIMEOUT = 120.0  # swap start -> the laptop answers
RECOVER_BOUND = 90.0  # fault over -> traffic must flow again within this
SETTLE_TIMEOUT = 90.0  # after restore: the namespace back at the snapshot
EXIT_TIMEOUT = 150.0  # Ctrl-C -> bridge exited
STALLS = (10.0, 30.0, 120.0)
SLOW_BPS = 64_000
SLOW_SECONDS = 20.0
APISERVER_DOWN_SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    """How many runs of each fault."""

    kills: int = 50
    each: int = 10
    stalls: tuple[float, ...] = STALLS
    seed: int = 12

    def faults(self) -> list[str]:
        names = ["link reset mid-transfer", *[f"link stall {s:g} s" for s in self.stalls],
                 f"link at {SLOW_BPS // 1000} kbit/s for {SLOW_SECONDS:g} s",
                 f"API server unreachable {APISERVER_DOWN_SECONDS:g} s",
                 "proxy pod deleted", "sidecar killed"]
        return names


FULL = Plan()
SHORT = Plan(kills=3, each=1, stalls=(10.0, 30.0))


def _kubectl_argv(kubeconfig: Path, namespace: str) -> list[str]:
    return [bench_cluster.kubectl_path(), "--kubeconfig", str(kubeconfig), "-n", namespace]


@dataclass
class Bench:
    kubeconfig: Path  # direct, for the harness
    linked: Path  # through the link, for bridge
    namespace: str
    link: toxiproxy.Link
    workdir: Path
    log: Callable[[str], None]
    ip: str = ""
    baseline: dict[str, Any] = field(default_factory=dict)
    local_port: int = 0  # the attach-mode runs' laptop server
    _n: int = 0

    # ---------------------------------------------------------------- cluster access

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        out = subprocess.run([*_kubectl_argv(self.kubeconfig, self.namespace), *args],
                             input=input, capture_output=True, text=True, timeout=60,
                             stdin=None if input is not None else subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()[:300]}")
        return out.stdout

    def snapshot(self) -> dict[str, Any]:
        """What must be the same after every run (names, specs, our annotations, Ready pods)."""
        got: dict[str, Any] = {}
        kinds = "deployments,replicasets,services,configmaps,secrets,pods"
        for item in json.loads(self.kubectl("get", kinds, "-o", "json"))["items"]:
            kind, meta = item["kind"], item["metadata"]
            if kind == "Pod":  # pods of the original come and go; count them, Ready and live
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in (item.get("status") or {}).get("conditions") or [])
                live = "deletionTimestamp" not in meta
                key = f"pods {json.dumps(meta.get('labels') or {}, sort_keys=True)}"
                got.setdefault(key, []).append(f"ready={ready} live={live}")
                continue
            if kind == "ReplicaSet":  # and no copy of bridge's lock left on it
                ours = sorted(k for k in meta.get("annotations") or {}
                              if k.startswith(state.PREFIX))
                got[f"ReplicaSet/{meta['name']}"] = [(item.get("spec") or {}).get("replicas"),
                                                     *ours]
                continue
            entry = {"labels": meta.get("labels") or {},
                     "annotations": meta.get("annotations") or {}}
            if kind == "Deployment":
                spec = item["spec"]
                entry["spec"] = {"replicas": spec.get("replicas"),
                                 "template": spec.get("template"),
                                 "selector": spec.get("selector")}
            elif kind == "Service":
                entry["spec"] = {"selector": item["spec"].get("selector"),
                                 "ports": item["spec"].get("ports")}
            elif kind == "Secret":
                entry["data"] = sorted((item.get("data") or {}).keys())
            elif kind == "ConfigMap":
                entry["data"] = item.get("data") or {}
            got[f"{kind}/{meta['name']}"] = entry
        for k, v in got.items():
            if k.startswith("pods "):
                v.sort()
        return got

    def diff(self, now: dict[str, Any]) -> list[str]:
        out = []
        for k in sorted(set(self.baseline) | set(now)):
            if k not in now:
                out.append(f"{k} gone")
            elif k not in self.baseline:
                out.append(f"{k} left behind")
            elif now[k] != self.baseline[k]:
                out.append(f"{k} differs: {json.dumps(now[k], sort_keys=True)[:200]}")
        return out

    def settled(self) -> list[str]:
        """Wait (bounded) for the namespace to be back at the snapshot; what still differs."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            d = self.diff(self.snapshot())
            if not d or time.monotonic() > deadline:
                return d
            time.sleep(0.5)

    # ---------------------------------------------------------------- bridge

    def bridge(self, *args: str, env: dict[str, str] | None = None) -> tuple[
            subprocess.Popen[str], Path]:
        self._n += 1
        err = self.workdir / f"bridge-{self._n}.err"
        with open(err, "w") as e:
            p = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "--kubeconfig", str(self.linked),
                 "-n", self.namespace, *args],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=e, stderr=subprocess.STDOUT,
                # a beat a second: `bridge restore` watches a heartbeat interval and a half
                env={**os.environ, "PYTHONUNBUFFERED": "1", "CI": "true",
                     "BRIDGE_HEARTBEAT_INTERVAL": "1", **(env or {})},
                text=True, start_new_session=True)
        return p, err

    def restore_cli(self) -> tuple[int, str]:
        p, err = self.bridge("restore", NAME)
        try:
            rc = p.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        return rc, err.read_text(errors="replace")

    def wait_for(self, want: str, timeout: float, alive: Callable[[], bool]) -> float:
        """Wait until 5 requests in a row are answered by ``want``; the time of the first."""
        deadline = time.monotonic() + timeout
        streak, first = 0, 0.0
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError("bridge exited")
            t = time.monotonic()
            try:
                ok = probe.http_get(self.ip, 80, 2.0) == want
            except OSError:
                ok = False
            if ok:
                first = first if streak else t
                streak += 1
                if streak >= 5:
                    return first
            else:
                streak = 0
            time.sleep(0.1)
        raise RuntimeError(f"the Service did not answer {want!r} within {timeout:g}s")


def _tail(path: Path, n: int = 3) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-n:])


def _stop(p: subprocess.Popen[str], timeout: float = EXIT_TIMEOUT) -> int | None:
    """Ctrl-C (SIGINT) and wait; SIGKILL if it does not exit in time (None then)."""
    if p.poll() is not None:
        return p.returncode
    p.send_signal(signal.SIGINT)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop_tree(p.pid, sig=signal.SIGKILL, grace=1)
        p.wait(timeout=10)
        return None


def _sidecar_pids(pods: set[str]) -> list[int]:
    """Processes of the proxy pods' sidecar (the test cluster runs pods as local processes,
    with the pod name as their HOSTNAME)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            argv = p.info["cmdline"] or []
            if "sidecar" in argv and "-m" in argv and p.environ().get("HOSTNAME") in pods:
                found.append(p.pid)
    return found


# ---------------------------------------------------------------- the faults


def _inject(b: Bench, fault: str) -> tuple[float, str]:
    """Do the fault; return (when it ended, note)."""
    if fault.startswith("link reset"):
        time.sleep(1.0)  # let a transfer get going
        b.link.reset()
        return time.monotonic(), ""
    if fault.startswith("link stall"):
        secs = float(fault.split()[2])
        b.link.stall()
        try:
            time.sleep(secs)
        finally:
            b.link.resume()
        return time.monotonic(), ""
    if fault.startswith("link at"):
        b.link.set_shape(toxiproxy.Shape("slow", 0, SLOW_BPS))
        try:
            time.sleep(SLOW_SECONDS)
        finally:
            b.link.set_shape(None)
        return time.monotonic(), ""
    if fault.startswith("API server unreachable"):
        b.link.server.request("POST", f"/proxies/{b.link.name}", {"enabled": False})
        try:
            time.sleep(APISERVER_DOWN_SECONDS)
        finally:
            b.link.server.request("POST", f"/proxies/{b.link.name}", {"enabled": True})
        return time.monotonic(), ""
    if fault == "proxy pod deleted":
        b.kubectl("delete", "pods", "-l", state.SESSION_LABEL, "--wait=false")
        return time.monotonic(), ""
    if fault == "sidecar killed":
        pods = {n.split("/", 1)[1] for n in b.kubectl(
            "get", "pods", "-l", state.SESSION_LABEL, "-o", "name").split()}
        pids = _sidecar_pids(pods)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return time.monotonic(), "" if pids else "no sidecar process found"
    raise ValueError(fault)


def run_fault(b: Bench, fault: str) -> Run:
    """One swap (command mode) through one fault; then Ctrl-C and check the namespace."""
    t_run = time.monotonic()
    port = procs.free_port()
    child = [sys.executable, str(REPO / "tests" / "equipment" / "bench" / "server.py"),
             "--port", str(port), "--body", "laptop"]
    p, err = b.bridge("swap", NAME, "--port", f"http:{port}", "--", *child)
    note = ""
    recovered: bool | None = False
    recover_s: float | None = None
    failed = 0
    try:
        b.wait_for(probe.LAPTOP, UP_TIMEOUT, lambda: p.poll() is None)
        kids = {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
        transfer = 1_000_000 if fault.startswith("link reset") else 0
        with probe.Prober(b.ip, 80, transfer_bytes=transfer) as pr:
            t0 = time.monotonic()
            t1, note = _inject(b, fault)
            deadline = t1 + RECOVER_BOUND
            back: float | None = None
            while time.monotonic() < deadline and p.poll() is None:
                back = probe.recovery(pr.samples, t1, [probe.LAPTOP])
                if back is not None and probe.recovery(pr.samples, t1, [probe.LAPTOP],
                                                       stable=10) is not None:
                    break
                time.sleep(0.2)
            else:
                back = None
        samples = pr.samples + pr.transfers
        end = back if back is not None else None
        failed = probe.failures(samples, t0, end)
        same_child = p.poll() is None and kids <= {
            c.pid for c in psutil.Process(p.pid).children(recursive=True)}
        recovered = back is not None and same_child
        recover_s = max(0.0, back - t1) if back is not None else None
        if p.poll() is not None:
            note = f"bridge exited {p.returncode}: {_tail(err)}"
        elif not same_child:
            note = "the command was restarted"
    except Exception as exc:  # noqa: BLE001 - counted as not recovered, with the reason
        note = f"{type(exc).__name__}: {exc}; bridge: {_tail(err)}"
    rc = _stop(p)
    changed = b.settled()
    if changed:
        note += f" | after Ctrl-C (exit {rc}): {'; '.join(changed)[:300]}"
        b.restore_cli()  # leave the next run a clean start; the run still counts as changed
        b.settled()
    return Run(fault, recovered, recover_s, failed, changed, time.monotonic() - t_run,
               note.strip(" |"))


def run_kill(b: Bench, n: int, rng: random.Random, setup_s: float, restore_s: float) -> Run:
    """``bridge swap`` (attach mode) SIGKILLed at a random point of its set-up (3 runs in 4)
    or of its restore; repaired by ``bridge restore`` (even n) or the next swap (odd n)."""
    t_run = time.monotonic()
    in_restore = n % 4 == 3
    p, err = b.bridge("swap", NAME, "--port", f"http:{b.local_port}")
    note = ""
    with probe.Prober(b.ip, 80) as pr:
        if in_restore:
            try:
                b.wait_for(probe.LAPTOP, UP_TIMEOUT, lambda: p.poll() is None)
            except RuntimeError as exc:
                note = f"swap did not come up: {exc}; "
            p.send_signal(signal.SIGINT)
            delay = rng.uniform(0, restore_s)
        else:
            delay = rng.uniform(0, setup_s)
        time.sleep(delay)
        t0 = time.monotonic()
        exited_before = p.poll() is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        note += (f"killed {delay:.2f}s into the {'restore' if in_restore else 'set-up'}"
                 + (" (it had already exited)" if exited_before else ""))
        if n % 2 == 0:
            rc, out = b.restore_cli()
            note += f"; bridge restore exit {rc}"
            if rc != 0:
                note += f": {out.strip().splitlines()[-1:]}"
        else:
            # The next swap, on this machine, knows the killed bridge is gone (bridge/
            # localstate.py) and repairs its session at once (the TTL is the fallback).
            q, qerr = b.bridge("swap", NAME, "--port", f"http:{b.local_port}",
                               env={"BRIDGE_HEARTBEAT_TTL": "2"})
            try:
                b.wait_for(probe.LAPTOP, UP_TIMEOUT, lambda: q.poll() is None)
                note += "; next swap came up"
            except RuntimeError as exc:
                note += f"; next swap failed ({exc}): {_tail(qerr, 2)}"
            rc2 = _stop(q)
            note += f", exit {rc2}"
        try:
            back = b.wait_for(probe.CLUSTER, SETTLE_TIMEOUT, lambda: True)
        except RuntimeError:
            back = None
    changed = b.settled()
    if changed:
        note += f" | left: {'; '.join(changed)[:300]}"
        b.restore_cli()
        b.settled()
    failed = probe.failures(pr.samples, t0, back)
    return Run("bridge SIGKILLed, then repaired", None,
               None if back is None else back - t0, failed, changed,
               time.monotonic() - t_run, note)


# ---------------------------------------------------------------- set-up and the whole suite


@contextlib.contextmanager
def bench(kubeconfig: Path | None, log: Callable[[str], None],
          namespace: str = "faults") -> Iterator[Bench]:
    """The suite's set-up (see the module's docstring); ``kubeconfig`` None starts a test
    cluster of its own."""
    with tempfile.TemporaryDirectory(prefix="bridge-faults-") as tmp, \
            toxiproxy.running(log) as tp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if kubeconfig is None:
            c = bench_cluster.TestCluster(work)
            stack.enter_context(procs.running(c.proc))
            c.wait_ready()
            kubeconfig = c.kubeconfig
        config = yaml.safe_load(kubeconfig.read_text())
        link = tp.link("apiserver", wan.api_upstream(config))
        linked = work / "kubeconfig-link"
        linked.write_text(yaml.safe_dump(wan.linked_kubeconfig(config, link.port)))
        linked.chmod(0o600)
        b = Bench(kubeconfig, linked, namespace, link, work, log)
        subprocess.run([*_kubectl_argv(kubeconfig, "default"), "create", "namespace",
                        namespace], capture_output=True, timeout=60, check=False)
        stack.callback(lambda: subprocess.run(
            [*_kubectl_argv(kubeconfig, "default"), "delete", "namespace", namespace,
             "--wait=false"], capture_output=True, timeout=60, check=False))
        port = procs.free_port()
        b.kubectl("apply", "--validate=false", "-f", "-", input=workload_manifest(
            NAME, REPLICAS, [{"name": "http", "containerPort": port}],
            [{"name": "http", "port": 80, "targetPort": "http"}]))
        b.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=90s")
        b.ip = b.kubectl("get", "service", NAME, "-o", "jsonpath={.spec.clusterIP}").strip()
        b.wait_for(probe.CLUSTER, 60, lambda: True)
        b.baseline = b.snapshot()
        b.local_port = procs.free_port()
        server = procs.Proc("laptop server", [
            sys.executable, str(REPO / "tests" / "equipment" / "bench" / "server.py"), "--port",
            str(b.local_port), "--body", "laptop"], env=procs.python_env())
        stack.enter_context(procs.running(server))
        server.wait_line(lambda s: s.startswith("listening "), 30)
        yield b


def _link_answers(b: Bench) -> None:
    """Stop the suite if the emulator itself is wedged (every later run would fail for it)."""
    try:
        left = b.link.toxics()
    except OSError as exc:
        raise RuntimeError(f"the link emulator (Toxiproxy) stopped answering: {exc}") from exc
    if left:
        raise RuntimeError(f"the link emulator still has toxics {left} after a run")


def calibrate(b: Bench) -> tuple[float, float]:
    """One clean swap (attach mode) and Ctrl-C: seconds of set-up (start -> the laptop
    answers) and of restore (Ctrl-C -> the cluster answers), to spread the kill points over.
    Raises if even that leaves the namespace changed."""
    t = time.monotonic()
    p, err = b.bridge("swap", NAME, "--port", f"http:{b.local_port}")
    b.wait_for(probe.LAPTOP, UP_TIMEOUT, lambda: p.poll() is None)
    setup_s = time.monotonic() - t
    t = time.monotonic()
    _stop(p)
    b.wait_for(probe.CLUSTER, SETTLE_TIMEOUT, lambda: True)
    restore_s = time.monotonic() - t
    left = b.settled()
    if left:
        raise RuntimeError(f"a clean swap and Ctrl-C left the namespace changed: {left}; "
                           f"{_tail(err)}")
    return setup_s, restore_s


def run(plan: Plan, log: Callable[[str], None], kubeconfig: Path | None = None,
        on_run: Callable[[Run], None] | None = None) -> list[Run]:
    runs: list[Run] = []
    rng = random.Random(plan.seed)

    def done(r: Run) -> None:
        runs.append(r)
        flag = "CHANGED " if r.changed else ""
        rec = {True: "recovered", False: "NOT recovered", None: "repaired"}[r.recovered]
        t = "-" if r.recover_s is None else f"{r.recover_s:.1f}s"
        log(f"  {flag}{r.fault}: {rec} in {t}, {r.failed_requests} failed requests, "
            f"{r.seconds:.0f}s run. {r.note}")
        if on_run:
            on_run(r)

    with bench(kubeconfig, log) as b:
        setup_s, restore_s = calibrate(b)
        log(f"clean swap: set-up {setup_s:.1f}s, restore {restore_s:.1f}s")
        faults = plan.faults()
        for i in range(plan.each):
            for fault in faults:
                log(f"{fault} ({i + 1}/{plan.each})")
                done(run_fault(b, fault))
                _link_answers(b)
        for n in range(plan.kills):
            log(f"SIGKILL {n + 1}/{plan.kills}")
            done(run_kill(b, n, rng, setup_s * 1.1, restore_s))
    return runs
