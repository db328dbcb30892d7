"""Compile the cluster's Go programs from their published modules into a cache outside the
checkout, keyed by version and by everything that decides the binaries (go.mod, go.sum, the
wrapper's sources, flags, Go version). Only the first start on a machine compiles.

Each product is a small wrapper module under tests/equipment/realcluster/go/<name>/ pinning the
upstream release (Kubernetes with the replace lines for its k8s.io/* staging modules).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"
CACHE = Path(os.environ.get("BRIDGE_CACHE", Path.home() / ".cache" / "bridge"))

K8S_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
COREDNS_VERSION = "v1.15.0"


def _k8s_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    return " ".join([
        "-s", "-w",
        f"-X k8s.io/component-base/version.gitVersion={version}",
        f"-X k8s.io/component-base/version.gitMajor={major}",
        f"-X k8s.io/component-base/version.gitMinor={minor}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={version}",
    ])


@dataclass(frozen=True)
class Product:
    name: str  # the wrapper module's directory under go/
    cache_name: str  # ~/.cache/bridge/<cache_name>-<version>/bin
    version: str
    packages: tuple[str, ...]
    binaries: tuple[str, ...]  # what `go build -o DIR/` writes
    ldflags: str = "-s -w"

    @property
    def module_dir(self) -> Path:
        return GO_DIR / self.name

    @property
    def bin_dir(self) -> Path:
        return CACHE / f"{self.cache_name}-{self.version}" / "bin"


KUBERNETES = Product(
    "kubernetes", "k8s", K8S_VERSION,
    tuple(f"k8s.io/kubernetes/cmd/{c}" for c in (
        "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")),
    ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"),
    _k8s_ldflags(K8S_VERSION))
ETCD = Product("etcd", "etcd", ETCD_VERSION, (".",), ("etcd",))
COREDNS = Product("coredns", "coredns", COREDNS_VERSION, (".",), ("coredns",))
PAUSE = Product("pause", "pause", "v1", (".",), ("pause",))
PRODUCTS = (KUBERNETES, ETCD, COREDNS, PAUSE)

KEY_FILE = ".key"


def go_command() -> str | None:
    return shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None)


def build_env() -> dict[str, str]:
    """The same environment every time, so Go's build cache is reused across runs and machines
    share nothing but the inputs."""
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    return env


def build_command(go: str, product: Product, out_dir: Path) -> list[str]:
    # One package: name the binary (go would name it after the wrapper module's path).
    out = f"{out_dir}/{product.binaries[0]}" if len(product.packages) == 1 else f"{out_dir}/"
    return [go, "build", "-trimpath", "-ldflags", product.ldflags, "-o", out, *product.packages]


def go_version(go: str) -> str:
    return subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                          check=True).stdout.strip()


def cache_key(product: Product, go_ver: str) -> str:
    """sha256 over the wrapper module's files, the packages, flags and Go version."""
    h = hashlib.sha256()
    for f in sorted(product.module_dir.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update("\0".join((*product.packages, product.ldflags, go_ver, "CGO_ENABLED=0",
                        "-trimpath")).encode())
    return h.hexdigest()


def is_built(product: Product, key: str) -> bool:
    stamp = product.bin_dir / KEY_FILE
    return (stamp.is_file() and stamp.read_text().strip() == key
            and all((product.bin_dir / b).is_file() for b in product.binaries))


def ensure(product: Product, log=print) -> Path:
    """The product's bin directory, compiled first unless the cache holds this exact build."""
    go = go_command()
    if go is None:
        raise RuntimeError("`go` not found: it compiles Kubernetes, etcd and CoreDNS "
                           "(install Go 1.26+, e.g. from go.dev)")
    key = cache_key(product, go_version(go))
    if is_built(product, key):
        return product.bin_dir
    product.bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(product.bin_dir.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent start compiles once, the other waits
        if is_built(product, key):
            return product.bin_dir
        tmp = product.bin_dir.parent / f"bin.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        log(f"compiling {product.name} {product.version} with {go_version(go)} into "
            f"{product.bin_dir} (first start on this machine)")
        started = time.monotonic()
        result = subprocess.run(build_command(go, product, tmp), cwd=product.module_dir,
                                env=build_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join(result.stdout.splitlines()[-20:])
            raise RuntimeError(f"compiling {product.name} {product.version} failed:\n{tail}")
        (tmp / KEY_FILE).write_text(key + "\n")
        shutil.rmtree(product.bin_dir, ignore_errors=True)
        os.replace(tmp, product.bin_dir)
        log(f"compiled {product.name} {product.version} in {time.monotonic() - started:.0f}s")
    return product.bin_dir


def ensure_all(log=print) -> dict[str, Path]:
    """Every binary the cluster runs, by name -> path."""
    found: dict[str, Path] = {}
    for product in PRODUCTS:
        bin_dir = ensure(product, log)
        for b in product.binaries:
            found[b] = bin_dir / b
    return found


def main() -> int:
    """`python -m tests.equipment.realcluster.gobuild`: compile (or find cached) every binary."""
    try:
        for name, path in ensure_all(lambda m: print(f"real-cluster: {m}", flush=True)).items():
            print(f"{name}: {path}")
    except RuntimeError as err:
        print(f"real-cluster: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
