"""Resolving TARGET to a Deployment, its container and its ports."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.errors import BridgeError
from bridge.model.target import (
    PortMap,
    TargetRef,
    choose_container,
    choose_ports,
    parse_port_spec,
    parse_target,
    resolve_service,
)


def deployment(name: str, labels: dict[str, str], containers: list[dict[str, Any]]) -> dict:
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": containers}}}}


def service(name: str, selector: dict[str, str], *ports: dict[str, Any]) -> dict:
    return {"metadata": {"name": name}, "spec": {"selector": selector, "ports": list(ports)}}


WEB = {"name": "web", "image": "web:1",
       "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090},
                 {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}
LOGGER = {"name": "logger", "image": "log:1", "ports": [{"name": "metrics", "containerPort": 9100}]}


@pytest.mark.parametrize("text,expected", [
    ("hello", TargetRef(None, "hello")),
    ("deployment/hello", TargetRef("deployment", "hello")),
    ("deploy/hello", TargetRef("deployment", "hello")),
    ("deployments.apps/hello", TargetRef("deployment", "hello")),
    ("svc/hello", TargetRef("service", "hello")),
    ("service/hello", TargetRef("service", "hello")),
])
def test_parse_target(text: str, expected: TargetRef) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["pod/hello", "deployment/", "svc/a/b", ""])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(BridgeError):
        parse_target(text)


def test_resolve_service_picks_the_selected_deployment() -> None:
    a = deployment("a", {"app": "a", "tier": "web"}, [WEB])
    b = deployment("b", {"app": "b"}, [WEB])
    assert resolve_service(service("s", {"app": "a"}), [b, a]) is a


def test_resolve_service_none_or_several() -> None:
    a = deployment("a", {"app": "x", "v": "1"}, [WEB])
    b = deployment("b", {"app": "x", "v": "2"}, [WEB])
    with pytest.raises(BridgeError, match=r"selects app=nope but no Deployment"):
        resolve_service(service("s", {"app": "nope"}), [a, b])
    with pytest.raises(BridgeError, match=r"deployment/a, deployment/b"):
        resolve_service(service("s", {"app": "x"}), [a, b])
    with pytest.raises(BridgeError, match="no selector"):
        resolve_service(service("s", {}), [a, b])


def test_choose_container_only_one() -> None:
    d = deployment("d", {"app": "d"}, [WEB])
    assert choose_container(d, [], None) is WEB


def test_choose_container_by_service_target_port() -> None:
    d = deployment("d", {"app": "d"}, [LOGGER, WEB])
    by_name = service("s", {"app": "d"}, {"port": 80, "targetPort": "http"})
    by_number = service("s", {"app": "d"}, {"port": 80, "targetPort": 9090})
    assert choose_container(d, [by_name], None) is WEB
    assert choose_container(d, [by_number], None) is WEB
    assert choose_container(d, [], "logger") is LOGGER


def test_choose_container_ambiguous_or_unknown() -> None:
    d = deployment("d", {"app": "d"}, [LOGGER, WEB])
    with pytest.raises(BridgeError, match=r"several containers \(logger, web\).*--container"):
        choose_container(d, [], None)
    with pytest.raises(BridgeError, match=r"no container 'db' \(containers: logger, web\)"):
        choose_container(d, [], "db")


def test_default_ports_are_every_tcp_container_port() -> None:
    assert choose_ports(WEB, [], []) == [PortMap(8080, 8080, "http"), PortMap(9090, 9090, "")]


def test_port_specs_with_mapping_and_names() -> None:
    assert choose_ports(WEB, [], ["http:18080", "9090"]) == [
        PortMap(8080, 18080, "http"), PortMap(9090, 9090, "")]


def test_port_the_container_does_not_have() -> None:
    with pytest.raises(BridgeError, match=r"no port 7000 \(its ports: 8080, 9090\)"):
        choose_ports(WEB, [], ["7000"])
    with pytest.raises(BridgeError, match=r"no port named 'grpc'"):
        choose_ports(WEB, [], ["grpc"])


def test_service_numeric_target_port_counts_as_a_port() -> None:
    bare = {"name": "bare", "image": "x"}
    svc = service("s", {"app": "d"}, {"port": 80, "targetPort": 5000})
    assert choose_ports(bare, [svc], []) == [PortMap(5000, 5000)]
    with pytest.raises(BridgeError, match="declares no TCP port"):
        choose_ports(bare, [], [])


def test_duplicate_ports() -> None:
    with pytest.raises(BridgeError, match="given twice"):
        choose_ports(WEB, [], ["8080:1", "9090:1"])


@pytest.mark.parametrize("text", ["", ":80", "80:", "80:http", "0", "70000", "1:99999"])
def test_parse_port_spec_rejects(text: str) -> None:
    with pytest.raises(BridgeError):
        parse_port_spec(text)


def test_parse_port_spec() -> None:
    assert parse_port_spec("80") == (80, None)
    assert parse_port_spec("http:8080") == ("http", 8080)
