"""The laptop's end (bridge/swap/ends.py), chosen once: the command end starts the command,
waits for its own listener and ends with its exit code; the attach end writes the outbound
variables to the env file and never has a command to wait for."""

from __future__ import annotations

import io
import signal
import sys
from dataclasses import dataclass, field

import anyio
import pytest

from bridge.cleanup import CleanupStack
from bridge.errors import NothingChanged
from bridge.local.signals import Control
from bridge.model.lifecycle import Phase
from bridge.progress import Progress
from bridge.swap import ends
from bridge.swap.options import SwapOptions
from bridge.swap.request import build
from bridge.swap.session import first_bridge_error
from tests.unit.support import free_port

SERVE_V6 = ("import socket, sys, time; s = socket.socket(socket.AF_INET6); "
            "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); "
            "s.bind(('::1', int(sys.argv[1]))); s.listen(); time.sleep(60)")


@dataclass
class Swapped:
    local_ports: list[int]
    session_id: str = "abcd"
    pod_env: dict[str, str] = field(default_factory=dict)
    own_env: dict[str, str] = field(default_factory=dict)
    env_file: str | None = None


def test_the_end_is_chosen_once_from_the_request() -> None:
    progress, control = Progress(stream=io.StringIO()), Control()
    stack = CleanupStack(progress)
    attach = ends.choose(build(SwapOptions("hello", outbound="none")), control, progress,
                         stack, [])
    command = ends.choose(build(SwapOptions("hello", command=(sys.executable,),
                                            outbound="none")), control, progress, stack, [])
    assert isinstance(attach, ends.AttachEnd) and attach.attach and not attach.gone()
    assert isinstance(command, ends.CommandEnd) and not command.attach


def test_the_command_end_starts_waits_for_its_listener_and_passes_the_signal() -> None:
    port = free_port()
    out = io.StringIO()
    progress, control = Progress(stream=out), Control()
    stack = CleanupStack(progress)
    seen: list[list[str]] = []

    async def hook(argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        seen.append(argv)
        return argv, env

    req = build(SwapOptions("hello", command=(sys.executable, "-c", SERVE_V6, str(port)),
                            outbound="none", timeout=20))
    end = ends.choose(req, control, progress, stack, [hook])
    swap = Swapped([port])

    async def main() -> tuple[dict[int, str] | None, int]:
        try:
            control.enter(Phase.HAND_OVER)
            await end.start(swap)
            assert control.child is not None and seen == [list(req.command)]
            hosts = await end.listening(swap, lambda: False)
            control.enter(Phase.HOLD)
            control.enter(Phase.HAND_BACK)
            control.ended_by = signal.SIGTERM
            return hosts, await end.finish()
        finally:
            with anyio.CancelScope(shield=True):
                await stack.unwind()

    hosts, code = anyio.run(main)
    assert hosts == {port: "::1"}
    assert code == 128 + signal.SIGTERM and control.phase is Phase.STOPPING
    assert "SIGTERM: passing it to the command" in out.getvalue()


def test_the_attach_end_refuses_no_own_listener_and_has_no_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.local import ports as localports

    monkeypatch.setattr(localports, "listeners", lambda: [
        localports.Listener("127.0.0.1", 8080, 77, 0, "python3"),
        localports.Listener("127.0.0.1", 9090, None, None)])
    monkeypatch.setattr(localports.os, "getuid", lambda: 0)
    out = io.StringIO()
    progress, control = Progress(stream=out), Control()
    end = ends.choose(build(SwapOptions("hello", outbound="none")), control, progress,
                      CleanupStack(progress), [])
    end.check_ports([8080])  # the developer's own service: said, not refused
    assert "pid 77, python3" in out.getvalue()
    with pytest.raises(NothingChanged, match="another user listens on 127.0.0.1:9090"):
        end.check_ports([9090])
    command = ends.choose(build(SwapOptions("hello", command=(sys.executable,),
                                            outbound="none")), control, progress,
                          CleanupStack(progress), [])
    with pytest.raises(NothingChanged, match=r"already in use .* \(pid 77, python3\).*nothing "
                                             "was changed"):
        command.check_ports([8080])
    assert anyio.run(end.listening, Swapped([8080]), lambda: False) == {}
    assert anyio.run(end.finish) == 0


def test_the_command_is_shown_on_one_line_quoted_as_a_shell_takes_it() -> None:
    """A multi-line `python -c` printed raw gave stderr lines that were not bridge's."""
    shown = ends.shown_command(["python3", "-c", "import os\nprint(os.getpid())", "a b"])
    assert "\n" not in shown
    assert shown == "python3 -c 'import os\\nprint(os.getpid())' 'a b'"
    assert ends.shown_command(["echo", "\x1b]52;c;aGk=\x07"]) == "echo '\\x1b]52;c;aGk=\\x07'"


@pytest.mark.parametrize("attach", [True, False])
def test_a_connection_another_user_took_ends_the_hold_with_the_tunnels_line(
        attach: bool) -> None:
    """Issue 19.6: the tunnel proves each forwarded connection; when it finds another user's
    listener (told at any time, also before the hold), the hold ends with that one line, as
    the poll's refusal does; only the first line counts."""
    progress, control = Progress(stream=io.StringIO()), Control()
    stack = CleanupStack(progress)
    command = () if attach else (sys.executable, "-c", "import time; time.sleep(60)")
    end = ends.choose(build(SwapOptions("hello", command=command, outbound="none")), control,
                      progress, stack, [])
    line = ("another user (uid 65534) took a connection to 127.0.0.1:8080 meant for your "
            "service (it listens there now): closed it before any of the cluster's bytes "
            "were sent; ending the session")

    async def main() -> None:
        try:
            control.enter(Phase.HAND_OVER)
            swap = Swapped([free_port()])
            await end.start(swap)
            end.foreign(line)
            end.foreign("a second one")
            with anyio.fail_after(10), pytest.raises(BaseExceptionGroup) as err:
                await end.hold(swap)
            error = first_bridge_error(err.value)  # as the session takes it
            assert error is not None and str(error) == line
        finally:
            with anyio.CancelScope(shield=True):
                await stack.unwind()

    anyio.run(main)
