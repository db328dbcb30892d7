"""The `bridge` command: swap, restore, status, doctor.

Connection options (--kubeconfig, --context, -n) and output options (-v, -q, --log-file) are
accepted before the subcommand, kubectl-style, and after it.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# Nothing heavy here: `bridge --help`, `--version` and shell completion import only this module,
# click and the light modules below; the Kubernetes client, aiohttp, asyncssh and anyio are
# imported inside the commands (a unit test keeps it so). And main() must install the filter
# of dependencies' warnings before any of them is imported.
import click

from bridge import __version__, quiet
from bridge.errors import BridgeError
from bridge.local import envsyntax
from bridge.model import state
from bridge.progress import NORMAL, QUIET, VERBOSE, Progress
from sidecar import protocol

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Common:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    verbose: bool = False
    quiet: bool = False
    log_file: str | None = None

    def merged(self, other: Common) -> Common:
        """Options given after the subcommand win over those given before it."""
        return Common(
            kubeconfig=other.kubeconfig or self.kubeconfig,
            context=other.context or self.context,
            namespace=other.namespace or self.namespace,
            verbose=other.verbose or self.verbose,
            quiet=other.quiet or self.quiet,
            log_file=other.log_file or self.log_file,
        )

    def progress(self) -> Progress:
        if self.verbose and self.quiet:
            raise click.UsageError("-v and -q cannot be used together")
        level = VERBOSE if self.verbose else QUIET if self.quiet else NORMAL
        try:
            return Progress(level, self.log_file)
        except OSError as e:
            raise BridgeError(f"cannot open the log file {self.log_file}: {e.strerror}; "
                              "nothing was changed") from e


def common_options(fn: F) -> F:
    for decorator in reversed([
        click.option("--kubeconfig", metavar="PATH",
                     help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)."),
        click.option("--context", metavar="NAME", help="Kubeconfig context to use."),
        click.option("-n", "--namespace", metavar="NS",
                     help="Namespace (default: the context's, else default)."),
        click.option("-v", "--verbose", is_flag=True, help="Say more about each step."),
        click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors."),
        click.option("--log-file", metavar="PATH",
                     help="Append every progress line, with timestamps, to PATH."),
    ]):
        fn = decorator(fn)
    return fn


def _common(ctx: click.Context, **kw: Any) -> Common:
    parent = ctx.find_object(Common) or Common()
    return parent.merged(Common(**{k: kw[k] for k in (
        "kubeconfig", "context", "namespace", "verbose", "quiet", "log_file")}))


def _pop_common(kw: dict[str, Any]) -> None:
    for k in ("kubeconfig", "context", "namespace", "verbose", "quiet", "log_file"):
        kw.pop(k, None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.version_option(__version__, prog_name="bridge",
                      message=f"%(prog)s %(version)s\nsidecar image: {protocol.DEFAULT_IMAGE}")
@click.pass_context
def cli(ctx: click.Context, **kw: Any) -> None:
    """Swap a Kubernetes Deployment for a process on this machine.

    \b
      bridge swap hello -- python app.py     traffic for `hello` reaches app.py
      bridge swap hello --port 8080          attach mode: run your service in an IDE
      bridge status                          who swapped what
      bridge restore hello                   repair what a dead session left
      bridge doctor hello                    what you may do here, what would get in the way
    """
    ctx.obj = Common(**kw)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _ttl() -> float:
    """How long a heartbeat must stay unchanged (watched here) for a session to be stale."""
    return _env_float("BRIDGE_HEARTBEAT_TTL", state.DEFAULT_HEARTBEAT_TTL)


def _interval() -> float:
    return _env_float("BRIDGE_HEARTBEAT_INTERVAL", state.DEFAULT_HEARTBEAT_INTERVAL)


class _SwapCommand(click.Command):
    """Notes whether `--` was given: `swap NAME --` with nothing after it is a mistake (a
    command left out), not a request for attach mode."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["bridge.dashdash"] = "--" in args
        return super().parse_args(ctx, args)


def _dashdash_given(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("bridge.dashdash"))


@cli.command(cls=_SwapCommand, context_settings={"ignore_unknown_options": False})
@click.argument("target")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--container", "-c", metavar="NAME",
              help="Container to swap (default: the one serving the Service, else the only one).")
@click.option("--port", "-p", "ports", multiple=True, metavar="REMOTE[:LOCAL]",
              help="Port to bring to this machine, by number or name; repeatable "
                   "(default: every TCP port of the container).")
@click.option("--env-file", metavar="PATH",
              help="Write the pod's environment to PATH, in --env-syntax (attach mode's default: "
                   ".bridge/NAME.env under the current directory).")
@click.option("--env-syntax", type=click.Choice(envsyntax.SYNTAXES), default="dotenv",
              show_default=True, help="Syntax of --env-file: dotenv (VS Code, JetBrains "
              "EnvFile, python-dotenv), json, sh, csh, fish, powershell, cmd, compose.")
@click.option("--env-json", metavar="PATH", help="Write the pod's environment as JSON.")
@click.option("--sidecar-image", default=protocol.DEFAULT_IMAGE, show_default=True,
              metavar="IMAGE", help="Image of the proxy container.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=1),
              metavar="SECONDS", help="Bound on each wait (proxy start, restore).")
@click.option("--no-wait", is_flag=True,
              help="On restore, do not wait for the original to be Ready.")
@click.option("--env-allow", "env_allow", multiple=True, metavar="NAME",
              help="Give the command the pod's NAME although bridge holds it back (loader, "
                   "interpreter, shell-hook and proxy variables); repeatable.")
@click.option("--allow-host-access", is_flag=True,
              help="Swap a Deployment whose pods use the node's network/PID/IPC namespaces "
                   "or run privileged (refused by default).")
@click.option("--outbound", type=click.Choice(["inject", "proxy", "none"]), default=None,
              help="How COMMAND reaches the cluster (names, ClusterIPs, pod IPs) from the pod: "
                   "inject (torsocks; the default when installed), proxy (ALL_PROXY/HTTP_PROXY "
                   "variables), none.")
@click.option("--forward", "forwards", multiple=True, metavar="SERVICE:PORT[:LOCAL]",
              help="Forward 127.0.0.1:LOCAL (default: a free port) to SERVICE:PORT from the pod, "
                   "and point SERVICE's *_SERVICE_HOST/_PORT variables at it; repeatable.")
@click.option("--heartbeat-interval", type=float, hidden=True,
              default=lambda: _env_float("BRIDGE_HEARTBEAT_INTERVAL",
                                         state.DEFAULT_HEARTBEAT_INTERVAL))
@click.option("--heartbeat-ttl", type=float, hidden=True,
              default=lambda: _env_float("BRIDGE_HEARTBEAT_TTL", state.DEFAULT_HEARTBEAT_TTL))
@click.option("--keepalive-interval", type=click.FloatRange(min=0.1), hidden=True,
              default=lambda: _env_float("BRIDGE_KEEPALIVE_INTERVAL", 5.0))
@click.option("--mount", "mount_dir", metavar="DIR",
              help="Bring the pod's files (the container's volumes, the service-account token) "
                   "to DIR, at their pod paths; the command finds DIR in $BRIDGE_ROOT. DIR must "
                   "be empty or new; it is emptied at the end (default: a temporary directory).")
@click.option("--mount-mode", type=click.Choice(["auto", "copy", "live"]),
              help="How the pod's files come: live (sshfs, shows changes) or copy (a snapshot "
                   "at start); auto: live where sshfs and FUSE work, else copy. Asks for the "
                   "files like --mount.")
@click.option("--mount-rw", is_flag=True,
              help="Let the command write to the pod's writable volumes (live mode).")
@common_options
@click.pass_context
def swap(ctx: click.Context, target: str, command: tuple[str, ...], **kw: Any) -> None:
    """Swap TARGET (a Deployment, or a Service's Deployment) for COMMAND on this machine.

    \b
    TARGET: NAME, deployment/NAME or svc/NAME.
    Without COMMAND bridge holds the swap (attach mode) until Ctrl-C, and writes the pod's
    environment to a file for your IDE. With it, COMMAND runs with the pod's environment and
    bridge exits with its exit code, after restoring the cluster.
    """
    if not command and _dashdash_given(ctx):
        raise click.UsageError("nothing after `--`: give the command to run (or leave out "
                               "`--` for attach mode); nothing was changed")
    import anyio

    from bridge.swap.request import build
    from bridge.swap.session import Session, SwapOptions

    common = _common(ctx, **kw)
    _pop_common(kw)
    progress = common.progress()
    opts = SwapOptions(
        target=target, command=tuple(command), kubeconfig=common.kubeconfig,
        context=common.context, namespace=common.namespace, container=kw["container"],
        ports=tuple(kw["ports"]), env_file=kw["env_file"], env_json=kw["env_json"],
        env_syntax=kw["env_syntax"],
        sidecar_image=kw["sidecar_image"], timeout=kw["timeout"], wait=not kw["no_wait"],
        heartbeat_interval=kw["heartbeat_interval"], heartbeat_ttl=kw["heartbeat_ttl"],
        keepalive_interval=kw["keepalive_interval"], env_allow=tuple(kw["env_allow"]),
        allow_host_access=kw["allow_host_access"],
        outbound=kw["outbound"], forwards=tuple(kw["forwards"]),
        mount_dir=kw["mount_dir"], mount_mode=kw["mount_mode"], mount_rw=kw["mount_rw"])
    try:
        code = anyio.run(Session(build(opts), progress).run)
    finally:
        progress.close()
    sys.exit(code)


@cli.command()
@click.argument("target", required=False)
@click.option("--all", "all_", is_flag=True, help="Every swapped Deployment of the namespace.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=1),
              metavar="SECONDS", help="Bound on waiting for the original to be Ready.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the original to be Ready.")
@common_options
@click.pass_context
def restore(ctx: click.Context, target: str | None, all_: bool, **kw: Any) -> None:
    """Restore TARGET (or --all) after a session died: replicas back, proxy gone, lock cleared.

    Safe to run any number of times.
    """
    if bool(target) == all_:
        raise click.UsageError("give a TARGET or --all (not both)")
    import anyio

    from bridge.kube.client import Kube
    from bridge.swap import lease
    from bridge.swap import restore as restore_mod

    common = _common(ctx, **kw)
    progress = common.progress()

    async def run() -> bool:
        async with await Kube.connect(common.kubeconfig, common.context,
                                      common.namespace) as kube:
            # a live session is watched a heartbeat interval and a half (to warn before
            # breaking it): long enough to see it beat
            out = await restore_mod.repair(
                kube, None if all_ else str(target), progress, wait=not kw["no_wait"],
                wait_timeout=kw["timeout"],
                watch=lambda k, locked, p: lease.watch_sessions(
                    k, locked, ttl=_ttl(), progress=p, limit=1.5 * _interval()))
            return out.ok

    try:
        ok = anyio.run(run)
    finally:
        progress.close()
    sys.exit(0 if ok else 1)


@cli.command()
@common_options
@click.pass_context
def status(ctx: click.Context, **kw: Any) -> None:
    """List the swapped Deployments of the namespace: owner, ports, age and heartbeat.

    Whether a session is live is seen by watching its heartbeat change (at most one heartbeat
    interval for a live session, the TTL for a dead one); no clocks are compared.
    """
    import anyio

    from bridge import status as status_mod
    from bridge.kube.client import Kube
    from bridge.swap import lease

    common = _common(ctx, **kw)
    progress = common.progress()

    async def run() -> tuple[str, list[status_mod.Row]]:
        async with await Kube.connect(common.kubeconfig, common.context,
                                      common.namespace) as kube:
            deps = await kube.list_deployments()
            locked = status_mod.locked(deps)
            seen = await lease.watch_sessions(kube, locked, ttl=_ttl(),
                                              progress=progress) if locked else {}
            return kube.namespace, status_mod.rows(deps, _now(), seen)

    try:
        ns, rows = anyio.run(run)
    finally:
        progress.close()
    if not rows:
        click.echo(f"No swapped deployments in namespace {ns}.", err=True)
        return
    click.echo(status_mod.table(rows))
    for line in status_mod.restore_commands(rows, ns, common.context, common.kubeconfig):
        click.echo(line, err=True)


@cli.command()
@click.argument("target", required=False)
@click.option("--sidecar-image", default=protocol.DEFAULT_IMAGE, show_default=True,
              metavar="IMAGE", help="Image of the proxy container to look for on the nodes.")
@common_options
@click.pass_context
def doctor(ctx: click.Context, target: str | None, sidecar_image: str, **kw: Any) -> None:
    """Check, changing nothing, that you may swap here (and TARGET, if given).

    One line each: the cluster version, every missing permission, controllers that would
    undo a swap of TARGET, whether the sidecar image is on a node. Exit 1 if something
    bridge needs is missing.
    """
    import anyio

    from bridge import doctor as doctor_mod
    from bridge.kube.client import Kube

    common = _common(ctx, **kw)

    async def run() -> doctor_mod.Report:
        async with await Kube.connect(common.kubeconfig, common.context,
                                      common.namespace) as kube:
            return await doctor_mod.examine(kube, target, sidecar_image)

    report = anyio.run(run)
    for line in doctor_mod.lines(report):
        click.echo(line)
    sys.exit(0 if report.ok else 1)


@cli.group()
def ide() -> None:
    """Debug a swapped service from your IDE (writes its configuration; no plugin needed)."""


@ide.command("vscode")
@click.argument("target")
@click.option("--program", metavar="PATH", help="Script to debug (default: the open file).")
@click.option("--module", "-m", metavar="MODULE", help="Module to debug (python -m MODULE).")
@click.option("--arg", "args", multiple=True, metavar="ARG", help="Argument for it; repeatable.")
@click.option("--port", "-p", "ports", multiple=True, metavar="REMOTE[:LOCAL]",
              help="As for `bridge swap`; repeatable.")
@click.option("--workspace", default=".", show_default=True, metavar="DIR",
              type=click.Path(file_okay=False, exists=True),
              help="The VS Code workspace folder (its .vscode/ is written).")
@common_options
@click.pass_context
def ide_vscode(ctx: click.Context, target: str, program: str | None, module: str | None,
               args: tuple[str, ...], ports: tuple[str, ...], workspace: str, **kw: Any) -> None:
    """Write (or update) a VS Code debug configuration that swaps TARGET while you debug.

    \b
    .vscode/tasks.json:  "bridge: swap NAME" (runs bridge swap until the debug session ends)
                         and "bridge: end swap NAME"
    .vscode/launch.json: "bridge: debug NAME" (debugpy, with the pod's environment)
    Other entries and comments in those files are kept. --kubeconfig, --context, -n, -v and
    --log-file are passed on to that swap; -q quiets this command.
    """
    from pathlib import Path

    from bridge.local.ide import vscode

    if program and module:
        raise click.UsageError("give --program or --module, not both")
    common = _common(ctx, **kw)
    if common.verbose and common.quiet:
        raise click.UsageError("-v and -q cannot be used together")
    # absolute paths: the task runs in the workspace folder, not necessarily here
    swap_args: list[str] = []
    for flag, value in (("--kubeconfig", common.kubeconfig and os.path.abspath(common.kubeconfig)),
                        ("--context", common.context), ("--namespace", common.namespace),
                        ("--log-file", common.log_file and os.path.abspath(common.log_file))):
        if value:
            swap_args += [flag, value]
    if common.verbose:
        swap_args.append("--verbose")
    opts = vscode.Options(target=target, name=vscode.name_of_target(target), program=program,
                          module=module, args=args, ports=ports, swap_args=tuple(swap_args))
    written = vscode.write(Path(workspace), opts)
    if common.quiet:
        return
    for path in written:
        click.echo(f"bridge: wrote {path}", err=True)
    click.echo(f'bridge: in VS Code, run "{vscode.launch_name(opts)}" (Run and Debug)', err=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def main(argv: list[str] | None = None) -> None:
    quiet.dependencies()
    try:
        cli.main(args=argv, prog_name="bridge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("bridge: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BridgeError as e:
        click.echo(f"bridge: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("bridge: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":
    main()
