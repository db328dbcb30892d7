"""The routed wire contract (issue 20, design section 10): the lease set's JSON as the router's
template carries it, the order leases are offered a request, and the routed commands' replies.

Everything read here may have been written by a neighbour who can edit the router Deployment
or answer in a pod: every malformed input is refused whole, in one line, with what was read
escaped."""

from __future__ import annotations

import base64
import json

import asyncssh
import pytest

from sidecar import headerrules, protocol
from sidecar.protocol import Lease, LeaseSetError, ReplyError


def _key() -> str:
    line = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    return " ".join(line.split()[:2])  # no comment: the one spelling a lease carries


KEYS = [_key() for _ in range(20)]


def lease(session: str = "a1b2c3d4", *, kind: str = "steal", rules: list[list[str]] | None = None,
          key: int = 0, ports: list[int] | None = None, owner: str = "alice@lap",
          started_at: int = 1_765_000_000) -> dict[str, object]:
    return {"session": session, "owner": owner, "kind": kind, "rules": rules or [],
            "key": KEYS[key], "ports": [8080] if ports is None else ports,
            "started_at": started_at}


def decode(*items: object) -> tuple[Lease, ...]:
    return protocol.decode_leases(json.dumps(list(items)))


# ---------------------------------------------------------------- version


def test_protocol_version_is_not_bumped_before_the_routed_commands_exist() -> None:
    # The agent and today's sidecar compare PROTOCOL_VERSION for equality: bumping it before
    # the sidecar serves attach/detach would make every image built from here claim them.
    assert protocol.PROTOCOL_VERSION == 1
    assert not set(protocol.ROUTED_COMMANDS) & set(protocol.COMMANDS)


def test_exclusive_swaps_accept_old_sidecars_routed_ones_do_not() -> None:
    assert protocol.accepts_protocol(1, routed=False)
    assert protocol.accepts_protocol(2, routed=False)
    assert not protocol.accepts_protocol(1, routed=True)
    assert protocol.accepts_protocol(2, routed=True)
    for theirs in (3, 0, -1, True, "2", 2.0, None):
        assert not protocol.accepts_protocol(theirs, routed=False), theirs
        assert not protocol.accepts_protocol(theirs, routed=True), theirs


# ---------------------------------------------------------------- the lease set


def test_a_lease_set_round_trips() -> None:
    leases = decode(lease(rules=[["X-Dev", "=", "alice"], ["x-tenant", "~=", "acme|globex"]],
                          ports=[9090, 8080]),
                    lease("b0b", kind="mirror", key=1, ports=[]))
    a, b = leases
    assert a.rules == headerrules.parse_rules(["x-dev=alice", "x-tenant~=acme|globex"])
    assert a.ports == (8080, 9090) and not a.catch_all and a.started_at == 1_765_000_000
    assert b.kind == protocol.KIND_MIRROR and not b.catch_all and b.ports == ()
    assert protocol.decode_leases(protocol.encode_leases(leases)) == leases
    assert protocol.decode_leases(protocol.encode_leases(leases).encode()) == leases


def test_the_written_form_is_ascii_and_bounded() -> None:
    text = protocol.encode_leases(decode(lease(owner="zoë ☃ @lap")))
    assert text.isascii() and "\n" not in text
    # a set at every bound still fits MAX_LEASES_BYTES
    rule = lambda i: [f"x-{'h' * 60}{i}", "=", "v" * 256]  # noqa: E731
    full = [lease(f"s{i}", key=i, owner="o" * 80, rules=[rule(j) for j in range(8)],
                  ports=list(range(1, 65)))
            for i in range(protocol.MAX_LEASES)]
    full[0]["rules"] = []  # one catch-all; the other rule sets must differ: vary the first value
    for i, item in enumerate(full[1:], 1):
        item["rules"][0][2] = f"{i:03d}" + "v" * 253  # type: ignore[index]
    assert len(protocol.encode_leases(decode(*full))) <= protocol.MAX_LEASES_BYTES


@pytest.mark.parametrize("item, says", [
    ("not an object", "not a JSON object"),
    ({**lease(), "extra": 1}, "unknown field 'extra'"),
    ({k: v for k, v in lease().items() if k != "key"}, "field key is missing"),
    (lease("A1B2"), "session 'A1B2' is not a session id"),
    (lease("a" * 21), "is not a session id"),
    (lease("ab\u202ecd"), r"session 'ab\u202ecd'"),  # escaped: a bidi override shown as text
    ({**lease(), "session": 12}, "session int"),
    (lease(owner=""), "owner '' is not printable"),
    (lease(owner="o" * 81), "1 to 80 characters"),
    (lease(owner="ali\x1b[2Jce"), r"owner 'ali\x1b[2Jce'"),
    (lease(owner="a\nb"), r"owner 'a\nb'"),
    (lease(kind="steal "), "kind 'steal ' is not one of steal, mirror"),
    (lease(kind=["steal"]), "kind list"),  # type: ignore[arg-type]
    (lease(rules=[["x-dev", "=", "a"]] * 2), "given twice"),
    (lease(rules=[["x-dev", "=", "a"], ["X-DEV", "=", "a"]]), "given twice"),
    (lease(rules=[[":path", "=", "/"]]), "pseudo-headers"),
    (lease(rules=[["x", "~=", "(a*)*\\1"]]), "regular expression"),
    (lease(rules=[["x", "=", "a"]] + [[f"h{i}", "=", "1"] for i in range(8)]), "at most 8"),
    (lease(rules=[["x", "=="]]), "triple"),  # type: ignore[list-item]
    (lease(rules={"x": "a"}), "must be a list"),  # type: ignore[arg-type]
    ({**lease(), "key": KEYS[0] + " dev@laptop"}, "not an ssh-ed25519 public key"),
    ({**lease(), "key": "ssh-rsa " + KEYS[0].split()[1]}, "not an ssh-ed25519"),
    ({**lease(), "key": "ssh-ed25519 " + base64.b64encode(b"\0" * 51).decode()},
     "not an ssh-ed25519"),  # the right length, not an ed25519 blob
    ({**lease(), "key": "ssh-ed25519 " + KEYS[0].split()[1][:-1] + "="}, "not an ssh-ed25519"),
    ({**lease(), "key": None}, "key NoneType"),
    (lease(ports=[0]), "TCP ports"),
    (lease(ports=[65536]), "TCP ports"),
    (lease(ports=[True]), "TCP ports"),  # a JSON true is not port 1
    (lease(ports=[80.0]), "TCP ports"),  # type: ignore[list-item]
    (lease(ports=["80"]), "TCP ports"),  # type: ignore[list-item]
    (lease(ports=list(range(1, 66))), "at most 64"),
    (lease(ports=[80, 80]), "listed twice"),
    (lease(started_at=-1), "started_at '-1' is not a time"),
    (lease(started_at=2**40), "is not a time"),
    ({**lease(), "started_at": "2026-12-08T00:00:00Z"}, "is not a time"),
])
def test_a_malformed_lease_is_refused_in_one_escaped_line(item: object, says: str) -> None:
    with pytest.raises(LeaseSetError) as e:
        decode(lease("first", key=5), item)
    message = str(e.value)
    assert says in message, message
    assert "\n" not in message and "\x1b" not in message and "\u202e" not in message
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("text, says", [
    ("", "not JSON"),
    ("{}", "not a JSON list"),
    ("[1", "not JSON"),
    ('[{"session": "a", "session": "b"}]', "'session' appears twice"),  # no reader picks one
    ("[NaN]", "NaN is not a JSON number"),
    ("[Infinity]", "Infinity"),
    ("[1" + "0" * 5000 + "]", "not JSON"),  # more digits than Python reads
    ("[" * 100_000 + "]" * 100_000, "longer than"),
    ("[" * 60_000 + "]" * 60_000, "nested too deeply"),
    (b"[\xff]", "not UTF-8"),
    (None, "not text"),
    (json.dumps([lease(f"s{i}", key=i) for i in range(17)]), "17 leases; at most 16"),
])
def test_what_is_not_a_lease_set_is_refused_before_any_lease_is_read(text: object,
                                                                      says: str) -> None:
    with pytest.raises(LeaseSetError, match="BRIDGE_LEASES") as e:
        protocol.decode_leases(text)
    assert says in str(e.value)


def test_oversized_text_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = []
    monkeypatch.setattr(protocol.json, "loads", lambda *a, **k: parsed.append(a))
    big = json.dumps([lease()]) + " " * protocol.MAX_LEASES_BYTES
    with pytest.raises(LeaseSetError, match="longer than"):
        protocol.decode_leases(big)
    # counted in bytes, not characters: 4-byte characters below the character limit
    with pytest.raises(LeaseSetError, match="longer than"):
        protocol.decode_leases('["' + "\U0001f600" * (protocol.MAX_LEASES_BYTES // 3) + '"]')
    assert parsed == []


@pytest.mark.parametrize("items, says", [
    ([lease("a"), lease("a", key=1)], "lease a appears twice"),
    ([lease("a"), lease("b")], "lease b carries the key of another lease"),
    ([lease("a"), lease("b", key=1)], "lease b is a second catch-all"),
    ([lease("a", rules=[["x", "=", "1"], ["y", "=", "2"]]),
      lease("b", key=1, rules=[["Y", "=", "2"], ["x", "=", "1"]])],
     "lease b has the same header rules as lease a"),
])
def test_a_set_whose_leases_collide_is_refused(items: list[object], says: str) -> None:
    with pytest.raises(LeaseSetError, match=says):
        decode(*items)
    leases = tuple(protocol.lease_from_json(i) for i in items)
    with pytest.raises(LeaseSetError, match=says):  # never written either
        protocol.encode_leases(leases)


def test_mirrors_may_share_rules_with_each_other_and_with_a_steal_lease() -> None:
    rules = [["x-dev", "=", "a"]]
    leases = decode(lease("a", rules=rules), lease("b", key=1, kind="mirror", rules=rules),
                    lease("c", key=2, kind="mirror", rules=rules), lease("d", key=3),
                    lease("e", key=4, kind="mirror"))
    assert len(leases) == 5


# ---------------------------------------------------------------- which lease gets a request


def _set() -> tuple[Lease, ...]:
    return decode(
        lease("catchall", key=0),
        lease("one", key=1, rules=[["x-dev", "=", "alice"]]),
        lease("two", key=2, rules=[["x-dev", "=", "alice"], ["x-tenant", "=", "acme"]]),
        lease("early", key=3, rules=[["x-dev", "~=", "al.*"]], started_at=2_000_000_000),
        lease("mirror", key=4, kind="mirror", rules=[["x-dev", "~=", ".*"]]),
        lease("all", key=5, kind="mirror"),
    )


ALL = frozenset({"catchall", "one", "two", "early", "mirror", "all"})


def sessions(leases: tuple[Lease, ...]) -> list[str]:
    return [le.session for le in leases]


def test_precedence_more_rules_first_then_the_set_order_then_the_catch_all() -> None:
    # "early" claims a start long after the others (a laptop's clock): order is the list's
    assert sessions(protocol.precedence(_set())) == ["two", "one", "early", "catchall"]


def test_a_request_goes_to_the_most_specific_usable_lease() -> None:
    both = [(b"x-dev", b"alice"), (b"x-tenant", b"acme")]
    c = protocol.choose(_set(), both, ALL)
    assert c.steal is not None and c.steal.session == "two"
    assert sessions(c.shadowed) == ["one", "early"]  # the catch-all is never "shadowed"
    assert sessions(c.mirrors) == ["mirror", "all"] and c.fell_back == ()
    c = protocol.choose(_set(), [("X-Dev", " alice ")], ALL)  # h2 str pairs, OWS stripped
    assert c.steal is not None and c.steal.session == "one" and sessions(c.shadowed) == ["early"]


def test_a_request_no_rule_takes_goes_to_the_catch_all_then_the_origin() -> None:
    c = protocol.choose(_set(), [(b"x-other", b"1")], ALL)
    assert c.steal is not None and c.steal.session == "catchall"
    assert sessions(c.mirrors) == ["all"]
    c = protocol.choose(_set(), [], ALL - {"catchall"})
    assert c.steal is None and sessions(c.fell_back) == ["catchall"]


def test_a_lease_that_is_not_usable_is_passed_over() -> None:
    both = [(b"x-dev", b"alice"), (b"x-tenant", b"acme")]
    c = protocol.choose(_set(), both, frozenset({"one", "catchall"}))
    assert c.steal is not None and c.steal.session == "one"
    assert sessions(c.fell_back) == ["two", "early"] and c.mirrors == ()
    c = protocol.choose(_set(), both, frozenset())
    assert c.steal is None and c.shadowed == () and c.mirrors == ()


def test_a_mirror_never_takes_the_request() -> None:
    leases = decode(lease("m", kind="mirror"))
    c = protocol.choose(leases, [(b"x", b"1")], frozenset({"m"}))
    assert c.steal is None and sessions(c.mirrors) == ["m"]


# ---------------------------------------------------------------- replies


def test_state_replies() -> None:
    reply = json.dumps(protocol.state_reply(protocol.STATE_ACTIVE))
    assert protocol.parse_state_reply(reply, protocol.CMD_ATTACH) == "ACTIVE"
    refused = json.dumps(protocol.refusal_reply(protocol.REASON_NO_LEASE, "lease \x1b gone"))
    with pytest.raises(ReplyError, match=r"attach refused \(no-lease\): 'lease \\x1b gone'"):
        protocol.parse_state_reply(refused, protocol.CMD_ATTACH)
    forged = json.dumps({"error": "x", "kind": "made-up"})
    with pytest.raises(ReplyError, match=r"refused \(failed\)"):
        protocol.parse_state_reply(forged, protocol.CMD_DETACH)
    for bad in ('{"state": "HAPPY"}', '{"state": "ACTIVE", "x": 1}', "[]", '{"state": 1}'):
        with pytest.raises(ReplyError, match="is not"):
            protocol.parse_state_reply(bad, protocol.CMD_ATTACH)


def _view() -> protocol.RouterView:
    return protocol.RouterView((protocol.LeaseView("a1", "ACTIVE", routed=12, mirrored=3,
                                                   shadowed=1, fell_back=2),
                                protocol.LeaseView("b2", "AWAY")),
                               origin_addresses=2, origin_errors=0, unmatched=5310)


def test_the_routers_view_round_trips() -> None:
    text = json.dumps(protocol.leases_reply(_view()))
    assert protocol.parse_leases_reply(text) == _view()


def _mutated(path: list[object], value: object) -> str:
    obj: dict[str, object] = protocol.leases_reply(_view())
    target: object = obj
    for step in path[:-1]:
        target = target[step]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return json.dumps(obj)


@pytest.mark.parametrize("path, value", [
    (["leases", 0, "routed"], -1),
    (["leases", 0, "routed"], True),
    (["leases", 0, "routed"], 1.5),
    (["leases", 0, "routed"], 2**63),
    (["leases", 0, "state"], "active"),
    (["leases", 0, "session"], "b2"),  # twice
    (["leases", 0, "session"], "../x"),
    (["leases", 0, "extra"], 1),
    (["origin", "addresses"], "2"),
    (["origin", "extra"], 0),
    (["unmatched"], None),
    (["extra"], 0),
    (["leases"], [{}] * 17),
])
def test_a_malformed_view_is_refused(path: list[object], value: object) -> None:
    with pytest.raises(ReplyError):
        protocol.parse_leases_reply(_mutated(path, value))


def test_origin_check_replies() -> None:
    reply = protocol.origin_check_reply({
        9090: protocol.open_failure(protocol.REASON_TIMEOUT, "10.0.0.7:9090", "timed out"),
        8080: protocol.ORIGIN_OK,
        7070: f"{protocol.REASON_NOT_HTTP}: the port answered with no HTTP",
        6060: "something else entirely"})
    assert list(reply["ports"]) == ["6060", "7070", "8080", "9090"]  # type: ignore[call-overload]
    assert protocol.parse_origin_check_reply(json.dumps(reply)) == {
        8080: (None, "ok"), 9090: ("timeout", "timed out"),
        7070: ("not-http", "the port answered with no HTTP"),
        6060: (None, "something else entirely")}


@pytest.mark.parametrize("ports", [
    {"080": "ok"}, {"0": "ok"}, {"65536": "ok"}, {"８０": "ok"}, {"-1": "ok"}, {"80": 1},
    {"80": "x" * 201}, {str(p): "ok" for p in range(1, 66)},
])
def test_a_malformed_origin_check_is_refused(ports: dict[str, object]) -> None:
    with pytest.raises(ReplyError):
        protocol.parse_origin_check_reply(json.dumps({"ports": ports}))
    with pytest.raises(ReplyError):
        protocol.parse_origin_check_reply(json.dumps({"ports": {}, "more": 1}))


def test_replies_are_bounded_before_they_are_parsed() -> None:
    with pytest.raises(ReplyError, match="longer than"):
        protocol.parse_leases_reply(b" " * (protocol.MAX_REPLY_BYTES + 1))
