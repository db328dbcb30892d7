"""Remove everything a real cluster run made, whether it stopped cleanly or was killed:
processes, pod cgroups, mounts, network namespaces, interfaces, iptables/nftables rules
(KUBE-*, CNI-*), host settings it changed, and its state directory. Idempotent: a start runs it
first, a stop runs it last. The decisions (which chains, which mounts) are pure functions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import PREFIX, Config

CHAIN_PREFIXES = ("KUBE-", "CNI-")
BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
NFT_TABLES = (("ip", "kube-proxy"), ("ip6", "kube-proxy"))
# Host settings the cluster needs; their earlier values are saved and put back.
SYSCTLS = ("net/ipv4/ip_forward", "kernel/panic", "kernel/panic_on_oops",
           "vm/overcommit_memory", "vm/panic_on_oom", "kernel/keys/root_maxkeys",
           "kernel/keys/root_maxbytes")
SAVED_SYSCTLS = Path("/run/bridge-real-cluster.sysctls.json")  # outlives the state dir

Log = Callable[[str], None]


def ours(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIXES)


def iptables_cleanup(save: str) -> str | None:
    """An `iptables-restore --noflush` script deleting every KUBE-*/CNI-* chain in the
    `iptables-save` output, after the built-in chains' rules that jump to them; None if there
    is nothing of ours."""
    out: list[str] = []
    table: str | None = None
    chains: list[str] = []
    deletes: list[str] = []

    def flush_table() -> None:
        if table is not None and (chains or deletes):
            out.append(f"*{table}")
            out.extend(f":{c} - [0:0]" for c in chains)  # declaring also flushes
            out.extend(deletes)
            out.extend(f"-X {c}" for c in chains)
            out.append("COMMIT")

    for line in save.splitlines():
        if line.startswith("*"):
            flush_table()
            table, chains, deletes = line[1:].strip(), [], []
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if ours(name):
                chains.append(name)
        elif line.startswith("-A "):
            parts = line.split()
            chain = parts[1]
            target = parts[parts.index("-j") + 1] if "-j" in parts else ""
            if chain in BUILTIN_CHAINS and ours(target):
                deletes.append("-D" + line[2:])
    flush_table()
    return "\n".join(out) + "\n" if out else None


def mounts_under(mountinfo: str, roots: Iterable[str]) -> list[str]:
    """Mount points at or below any of `roots`, deepest (and latest) first."""
    found: list[str] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        if any(point == r or point.startswith(r.rstrip("/") + "/") for r in roots):
            found.append(point)
    found.reverse()
    return sorted(dict.fromkeys(found), key=lambda p: -p.count("/"))


def _run(*cmd: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=input, capture_output=True, text=True)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def our_processes(config: Config) -> list[int]:
    """Processes of a run: anything whose command line names the state directory (components,
    containerd, its shims) and every process in the pods' cgroups."""
    me = os.getpid()
    state = str(config.state)
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            if any(state in arg for arg in _cmdline(int(entry))):
                pids.add(int(entry))
    for procs in Path("/sys/fs/cgroup/pids", config.cgroup_root.lstrip("/")).rglob("cgroup.procs"):
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:
            pass
    pids.discard(me)
    return sorted(pids)


def kill_processes(config: Config, log: Log) -> None:
    for attempt in range(3):
        pids = our_processes(config)
        if not pids:
            return
        if attempt == 0:
            log(f"stopping {len(pids)} leftover process(es)")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def unmount(config: Config) -> None:
    for point in mounts_under(Path("/proc/self/mountinfo").read_text(), [str(config.state)]):
        _run("umount", "-l", point)


def remove_netns_and_links(config: Config) -> None:
    for ns in _run("ip", "netns", "list").stdout.split():
        if ns.startswith(PREFIX):
            _run("ip", "netns", "delete", ns)
    links = _run("ip", "-j", "link", "show").stdout
    try:
        for link in json.loads(links or "[]"):
            name, master = link.get("ifname", ""), link.get("master", "")
            if name.startswith(PREFIX) or master == config.bridge_interface:
                _run("ip", "link", "delete", name)
    except ValueError:
        pass


def remove_firewall_rules() -> None:
    for save_cmd, restore_cmd in (("iptables-save", "iptables-restore"),
                                  ("ip6tables-save", "ip6tables-restore")):
        if shutil.which(save_cmd) is None:
            continue
        script = iptables_cleanup(_run(save_cmd).stdout)
        if script:
            result = _run(restore_cmd, "--noflush", input=script)
            if result.returncode != 0:
                raise RuntimeError(f"{restore_cmd} could not remove KUBE-*/CNI-* chains: "
                                   f"{result.stderr.strip()}")
    if shutil.which("nft"):
        for family, name in NFT_TABLES:
            _run("nft", "delete", "table", family, name)


def remove_cgroups(config: Config) -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / config.cgroup_root.lstrip("/")
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


def save_sysctls() -> None:
    """Record the host settings before the first change (a killed run's record is kept)."""
    if SAVED_SYSCTLS.exists():
        return
    values = {}
    for key in SYSCTLS:
        try:
            values[key] = Path("/proc/sys", key).read_text().strip()
        except OSError:
            pass
    SAVED_SYSCTLS.write_text(json.dumps(values))


def restore_sysctls() -> None:
    if not SAVED_SYSCTLS.exists():
        return
    for key, value in json.loads(SAVED_SYSCTLS.read_text()).items():
        try:
            Path("/proc/sys", key).write_text(value)
        except OSError:
            pass
    SAVED_SYSCTLS.unlink()


def remove_cni_cache() -> None:
    for f in Path("/var/lib/cni/results").glob("bridge-real-*"):
        f.unlink(missing_ok=True)


def sweep(config: Config, log: Log) -> None:
    """Everything above, in an order that works after a clean stop or a `kill -9`."""
    kill_processes(config, log)
    unmount(config)
    remove_netns_and_links(config)
    remove_firewall_rules()
    remove_cgroups(config)
    remove_cni_cache()
    restore_sysctls()
    if config.state.exists():
        unmount(config)
        shutil.rmtree(config.state, ignore_errors=True)


def leftovers(config: Config) -> list[str]:
    """What of a run is still on the machine (empty after a complete stop)."""
    found: list[str] = []
    found += [f"process {p}: {' '.join(_cmdline(p))[:80]}" for p in our_processes(config)]
    found += [f"mount {m}" for m in mounts_under(Path("/proc/self/mountinfo").read_text(),
                                                  [str(config.state)])]
    if config.state.exists():
        found.append(f"state directory {config.state}")
    try:
        for link in json.loads(_run("ip", "-j", "link", "show").stdout or "[]"):
            if link.get("ifname", "").startswith(PREFIX) or \
                    link.get("master") == config.bridge_interface:
                found.append(f"interface {link['ifname']}")
    except ValueError:
        pass
    found += [f"netns {n}" for n in _run("ip", "netns", "list").stdout.split()
              if n.startswith(PREFIX)]
    for save_cmd in ("iptables-save", "ip6tables-save"):
        if shutil.which(save_cmd):
            for line in _run(save_cmd).stdout.splitlines():
                if line.startswith(":") and ours(line[1:].split()[0]):
                    found.append(f"{save_cmd.split('-')[0]} chain {line[1:].split()[0]}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / config.cgroup_root.lstrip("/")).exists():
            found.append(f"cgroup {hierarchy / config.cgroup_root.lstrip('/')}")
    if shutil.which("nft"):
        for family, name in NFT_TABLES:
            if _run("nft", "list", "table", family, name).returncode == 0:
                found.append(f"nftables table {family} {name}")
    return found
