"""The pod's failures as errors (bridge.transport.outbound.pod): the sidecar's reason codes
(sidecar.protocol.REASON_*) mapped once to typed errors; an older sidecar's text still read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from bridge.transport.outbound import pod, socks5
from sidecar import protocol
from tests.sidecar.harness import free_ports, make_key, running_sidecar


def _connect_failed(description: str) -> asyncssh.ChannelOpenError:
    return asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, description)


@pytest.mark.parametrize(("description", "error", "words"), [
    ("refused: cannot connect to 10.96.0.7:80: Connection refused", pod.Refused,
     "Connection refused"),
    ("timeout: cannot connect to orders:80: timed out", pod.TimedOut, "timed out"),
    ("net-unreachable: cannot connect to [fd00::1]:80: Network is unreachable",
     pod.NetworkUnreachable, "Network is unreachable"),
    ("host-unreachable: cannot connect to 10.0.0.9:80: No route to host", pod.HostUnreachable,
     "No route to host"),
    ("nxdomain: cannot connect to nope:80: Name or service not known", pod.NoSuchName,
     "Name or service not known"),
    ("failed: cannot connect to x:80: Connection reset by peer", pod.PodError,
     "Connection reset by peer"),
])
def test_a_reason_code_makes_its_error_whatever_the_words(
        description: str, error: type[pod.PodError], words: str) -> None:
    got = pod.open_error(_connect_failed(description))
    assert type(got) is error and str(got) == words
    # the code decides, not the words: a refusal said in another language is still one
    localized = description.replace(words, "Verbindungsaufbau abgelehnt")
    assert type(pod.open_error(_connect_failed(localized))) is error


@pytest.mark.parametrize(("text", "error"), [
    ("Connection refused", pod.Refused),
    ("timed out", pod.TimedOut),
    ("Network is unreachable", pod.NetworkUnreachable),
    ("No route to host", pod.HostUnreachable),
    ("Name or service not known", pod.NoSuchName),
    ("something else", pod.PodError),
])
def test_an_older_sidecars_text_is_still_read(text: str, error: type[pod.PodError]) -> None:
    # before the codes: "cannot connect to HOST:PORT: TEXT"
    got = pod.open_error(_connect_failed(f"cannot connect to 10.0.0.1:80: {text}"))
    assert type(got) is error and str(got) == text


def test_ssh_codes_and_resolve_kinds() -> None:
    off = asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                    "outbound connections are off for this session")
    assert isinstance(pod.open_error(off), pod.NotAllowed)
    busy = asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, "too many open connections")
    assert type(pod.open_error(busy)) is pod.PodError
    assert type(pod.error_for(protocol.REASON_INVALID, "not a host name")) is pod.NoSuchName
    assert type(pod.error_for(protocol.REASON_TIMEOUT, "timed out")) is pod.TimedOut
    assert type(pod.error_for("from-a-newer-sidecar", "x")) is pod.PodError


@pytest.mark.timeout(60)
@pytest.mark.parametrize("switch", ["on", "off"])
def test_a_real_sidecars_refusal_is_a_refused_reply(tmp_path: Path, switch: str) -> None:
    key = make_key(tmp_path, "id_bridge")
    (dead,) = free_ports(1)
    with running_sidecar(tmp_path, key,
                         extra_env={protocol.ENV_DIRECT_TCPIP: switch}) as sidecar:

        async def scenario() -> pod.PodError:
            async with await sidecar.connect(key) as conn:
                with pytest.raises(pod.PodError) as info:
                    await pod.Pod(lambda: conn).open("127.0.0.1", dead)
                return info.value

        error = asyncio.run(scenario())
    if switch == "on":
        assert type(error) is pod.Refused and str(error) == "Connection refused"
        assert socks5.failure_for_reason(error.reason) == socks5.REP_CONNECTION_REFUSED
    else:
        assert type(error) is pod.NotAllowed
        assert socks5.failure_for_reason(error.reason) == socks5.REP_NOT_ALLOWED
