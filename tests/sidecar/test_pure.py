"""The sidecar's decisions as pure functions of data: settings, port claims, commands, probes."""

from __future__ import annotations

import json

import asyncssh
import pytest

from sidecar import commands, health, protocol, settings
from sidecar.ports import Claim, PortRegistry, refusal_message

KEY = asyncssh.generate_private_key("ssh-ed25519")
KEY_LINE = KEY.export_public_key("openssh").decode().strip() + " dev@laptop"


def _env(**extra: str) -> dict[str, str]:
    env = {protocol.ENV_AUTHORIZED_KEY: KEY_LINE, protocol.ENV_PORTS: "8080, 9090"}
    env.update(extra)
    return env


# ---------------------------------------------------------------- settings


def test_settings_defaults_and_parsing() -> None:
    loaded = settings.load(_env())
    assert loaded.authorized_key.public_data == KEY.public_data
    assert loaded.ports == frozenset({8080, 9090})
    assert loaded.ssh_port == protocol.DEFAULT_SSH_PORT
    assert loaded.health_port == protocol.DEFAULT_HEALTH_PORT
    assert loaded.bind == protocol.DEFAULT_BIND
    assert loaded.drain_seconds == protocol.DEFAULT_DRAIN_SECONDS
    assert loaded.keepalive_seconds == protocol.DEFAULT_KEEPALIVE_SECONDS


def test_settings_overrides() -> None:
    loaded = settings.load(
        _env(
            BRIDGE_SSH_PORT="2222",
            BRIDGE_HEALTH_PORT="2223",
            BRIDGE_BIND="::1",
            BRIDGE_DRAIN_SECONDS="0.5",
            BRIDGE_PORTS="80,,443,80",
        )
    )
    assert (loaded.ssh_port, loaded.health_port, loaded.bind) == (2222, 2223, "::1")
    assert loaded.drain_seconds == 0.5
    assert loaded.ports == frozenset({80, 443})


def test_empty_ports_means_no_remote_forwards() -> None:
    assert settings.load(_env(BRIDGE_PORTS="")).ports == frozenset()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"BRIDGE_PORTS": "8080;9090"}, "BRIDGE_PORTS entry must be a TCP port number"),
        ({"BRIDGE_PORTS": "0"}, "got '0'"),
        ({"BRIDGE_SSH_PORT": "ssh"}, "BRIDGE_SSH_PORT must be a TCP port number"),
        ({"BRIDGE_AUTHORIZED_KEY": ""}, "BRIDGE_AUTHORIZED_KEY is empty"),
        ({"BRIDGE_AUTHORIZED_KEY": KEY_LINE + "\n" + KEY_LINE}, "got several lines"),
        ({"BRIDGE_DRAIN_SECONDS": "nan"}, "must be a number of seconds >= 0"),
        ({"BRIDGE_HEALTH_PORT": "8080"}, "BRIDGE_PORTS includes 8080"),
        ({"BRIDGE_KEEPALIVE_SECONDS": "0"}, "BRIDGE_KEEPALIVE_SECONDS must be > 0"),
        ({"BRIDGE_BIND": "0.0.0.0:22"}, "BRIDGE_BIND must be an IP address"),
    ],
)
def test_settings_errors_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(settings.SettingsError) as err:
        settings.load(_env(**change))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_private_key_is_refused_without_echoing_it() -> None:
    private = KEY.export_private_key().decode()
    with pytest.raises(settings.SettingsError) as err:
        settings.load(_env(BRIDGE_AUTHORIZED_KEY=private.replace("\n", " ")))
    assert "private key" in str(err.value)
    assert private.splitlines()[1] not in str(err.value)


# ---------------------------------------------------------------- port registry


def test_claims_follow_the_rules() -> None:
    reg = PortRegistry(frozenset({8080, 9090}))
    a, b = object(), object()
    reg.attach(a)
    reg.attach(b)
    assert reg.claim(a, 7000) is Claim.NOT_ALLOWED
    assert reg.claim(a, 8080) is Claim.GRANTED
    assert reg.claim(a, 8080) is Claim.ALREADY_HELD
    assert reg.claim(b, 8080) is Claim.HELD_BY_OTHER
    assert reg.claim(b, 9090) is Claim.GRANTED
    assert reg.held() == {8080: a, 9090: b}
    assert reg.release(b, 8080) is False  # not b's to release
    assert reg.detach(a) == [8080]
    assert reg.claim(b, 8080) is Claim.GRANTED  # free at once after the holder left
    reg.close()
    assert reg.claim(a, 9090) is Claim.SHUTTING_DOWN


def test_ready_needs_an_attached_holder() -> None:
    reg = PortRegistry(frozenset({8080}))
    a = object()
    assert not reg.ready()
    reg.attach(a)
    assert not reg.ready()  # connected but holding nothing
    reg.claim(a, 8080)
    assert reg.ready()
    reg.release(a, 8080)
    assert not reg.ready()
    reg.claim(a, 8080)
    reg.close()
    assert not reg.ready()  # shutting down: take the pod out of the Service


def test_ready_without_ports_means_attached() -> None:
    reg = PortRegistry(frozenset())
    a = object()
    assert not reg.ready()
    reg.attach(a)
    assert reg.ready()
    reg.detach(a)
    assert not reg.ready()


def test_refusal_messages_are_one_line_and_specific() -> None:
    allowed = [9090, 8080]
    assert refusal_message(Claim.NOT_ALLOWED, 22, allowed) == (
        "port 22 is not in BRIDGE_PORTS (allowed: 8080, 9090)"
    )
    assert refusal_message(Claim.NOT_ALLOWED, 22, []).endswith("(allowed: none)")
    assert "another connected client" in refusal_message(Claim.HELD_BY_OTHER, 8080, allowed)


# ---------------------------------------------------------------- commands


def test_env_hides_settings_only() -> None:
    environ = {"BRIDGE_PORTS": "1", "BRIDGE_X": "secret", "APP": "1", "bridge_lower": "kept"}
    result = commands.run("env", environ)
    assert result.exit_status == 0 and result.stderr == ""
    assert json.loads(result.stdout) == {"APP": "1", "bridge_lower": "kept"}


def test_version_shape() -> None:
    result = commands.run(" version ", {})
    assert json.loads(result.stdout) == {
        "sidecar": protocol.SIDECAR_VERSION,
        "protocol": protocol.PROTOCOL_VERSION,
    }


def test_unknown_commands_and_shells_are_refused_on_stderr() -> None:
    unknown = commands.run("rm -rf /", {})
    assert (unknown.stdout, unknown.exit_status) == ("", commands.EXIT_UNKNOWN_COMMAND)
    assert unknown.stderr.count("\n") == 1 and "'rm -rf /'" in unknown.stderr
    long = commands.run("x" * 500, {})
    assert len(long.stderr) < 250
    shell = commands.refusal("an interactive shell")
    assert shell.exit_status == commands.EXIT_REFUSED and "env, version" in shell.stderr


# ---------------------------------------------------------------- probes


def test_probe_responses() -> None:
    reg = PortRegistry(frozenset({8080}))
    assert health.respond("GET", "/healthz", reg) == (200, {"ok": True})
    assert health.respond("GET", "/ready", reg) == (503, {"ready": False, "forwarded_ports": []})
    a = object()
    reg.attach(a)
    reg.claim(a, 8080)
    assert health.respond("GET", "/ready?verbose=1", reg) == (
        200,
        {"ready": True, "forwarded_ports": [8080]},
    )
    assert health.respond("POST", "/ready", reg)[0] == 405
    assert health.respond("GET", "/", reg)[0] == 404
    head = health.render("HEAD", 200, {"ok": True})
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 13" in head


# ---------------------------------------------------------------- dependencies


def test_sidecar_imports_only_stdlib_its_image_dependencies_and_itself() -> None:
    """The image installs what requirements/sidecar.in names (asyncssh, h11, h2) and nothing
    else; nothing of bridge/ (or anything else) may creep in."""
    import ast
    import sys
    from pathlib import Path

    package = Path(protocol.__file__).parent
    declared = {line.strip() for line in
                (package.parent / "requirements" / "sidecar.in").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert declared == {"asyncssh", "h11", "h2"}
    allowed = set(sys.stdlib_module_names) | declared | {"sidecar", "__future__"}
    found: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    assert "asyncssh" in found
    assert {name: files for name, files in found.items() if name not in allowed} == {}


# ---------------------------------------------------------------- the pod's environment


def test_pod_environment_drops_settings_image_variables_and_coercion() -> None:
    from sidecar import podenv

    image = {"PATH": "/usr/local/bin:/usr/bin", "LANG": "C.UTF-8", "PYTHON_VERSION": "3.11.9"}
    environ = {
        "PATH": "/custom/bin:/usr/bin",  # the spec overrides the image's PATH: kept
        "PYTHON_VERSION": "3.11.9",  # the image's own, unchanged: dropped
        "BRIDGE_PORTS": "8080",
        "DATABASE_URL": "postgres://db:5432/app",
        "HOSTNAME": "hello-proxy",
    }
    assert podenv.pod_environment(environ, image) == {
        "PATH": "/custom/bin:/usr/bin",
        "DATABASE_URL": "postgres://db:5432/app",
        "HOSTNAME": "hello-proxy",
    }


@pytest.mark.parametrize(
    ("environ", "coerced"),
    [
        ({"LC_CTYPE": "C.UTF-8"}, True),
        ({"LC_CTYPE": "C.UTF-8", "LANG": "C"}, True),
        ({"LC_CTYPE": "C.UTF-8", "LANG": "en_US.UTF-8"}, False),
        ({"LC_CTYPE": "C.UTF-8", "LC_ALL": "C"}, False),
        ({"LC_CTYPE": "de_DE.UTF-8"}, False),
        ({}, False),
    ],
)
def test_locale_coercion_is_recognised(environ: dict[str, str], coerced: bool) -> None:
    from sidecar import podenv

    assert podenv.locale_was_coerced(environ) is coerced
    kept = "LC_CTYPE" in podenv.pod_environment(environ, {})
    assert kept is ("LC_CTYPE" in environ and not coerced)


def test_image_record_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    from sidecar import podenv

    path = Path(str(tmp_path)) / "image-env.json"
    podenv.record(path, {"PATH": "/usr/bin", "HOSTNAME": "buildkitsandbox", "HOME": "/root"})
    assert podenv.load_image_env(path) == {"PATH": "/usr/bin"}
    assert podenv.load_image_env(Path(str(tmp_path)) / "missing.json") == {}
    path.write_text("[1, 2]")
    assert podenv.load_image_env(path) == {}


def test_connect_failures_have_reason_codes() -> None:
    import errno
    import socket

    from sidecar import forwards

    def reason(exc: BaseException) -> str:
        return forwards.connect_reason(exc)

    assert reason(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) == "refused"
    assert reason(TimeoutError()) == protocol.REASON_TIMEOUT
    assert reason(OSError(errno.ETIMEDOUT, "x")) == protocol.REASON_TIMEOUT
    assert reason(OSError(errno.ENETUNREACH, "x")) == protocol.REASON_NET_UNREACHABLE
    assert reason(OSError(errno.EHOSTUNREACH, "x")) == protocol.REASON_HOST_UNREACHABLE
    assert reason(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == \
        protocol.REASON_NXDOMAIN
    assert reason(socket.gaierror(socket.EAI_AGAIN, "Temporary failure")) == \
        protocol.REASON_FAILED
    assert reason(OSError(errno.ECONNRESET, "x")) == protocol.REASON_FAILED
    assert reason(OSError("Multiple exceptions: ...")) == protocol.REASON_FAILED


def test_open_failure_descriptions_round_trip_and_old_ones_have_no_code() -> None:
    text = protocol.open_failure(protocol.REASON_REFUSED, "[fd00::1]:80", "Connection refused")
    assert text == "refused: cannot connect to [fd00::1]:80: Connection refused"
    assert protocol.open_reason(text) == ("refused", "Connection refused")
    # a sidecar before the codes, and an older agent reading a new one (the last ": " part)
    assert protocol.open_reason("cannot connect to 10.0.0.1:80: Connection refused") == \
        (None, "Connection refused")
    assert text.rpartition(": ")[2] == "Connection refused"
    assert protocol.open_reason("unknown-word: x: y") == (None, "y")
    assert len(set(protocol.REASONS)) == len(protocol.REASONS)
