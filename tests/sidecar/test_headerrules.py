"""Header rules (`--header NAME=VALUE`, `NAME~=REGEX`): parsing, one-line refusals, matching
h11's and h2's header lists, and a regular-expression subset that agrees with Python's `re`
where both apply and never backtracks."""

from __future__ import annotations

import random
import re

import pytest

from sidecar import headerrules as hr

# --- parsing ------------------------------------------------------------------------------


def test_equals_rule_keeps_value_and_lowers_the_name() -> None:
    r = hr.parse_rule("X-Dev=Alice")
    assert (r.name, r.op, r.value) == ("x-dev", hr.EQUALS, "Alice")
    assert str(r) == "x-dev=Alice"
    assert r.as_list() == ["x-dev", "=", "Alice"]


def test_tilde_equals_makes_a_regular_expression() -> None:
    r = hr.parse_rule("x-tenant~=^(acme|globex)$")
    assert (r.name, r.op, r.value) == ("x-tenant", hr.MATCHES, "^(acme|globex)$")
    assert r.accepts("acme") and r.accepts("globex") and not r.accepts("acme2")


def test_only_the_first_equals_splits() -> None:
    assert hr.parse_rule("authorization=Bearer a=b").value == "Bearer a=b"
    assert hr.parse_rule("x~=a=b").value == "a=b"
    # a tilde inside the name is a name character, not an operator
    r = hr.parse_rule("a~b=c")
    assert (r.name, r.op) == ("a~b", hr.EQUALS)


def test_an_empty_value_is_a_rule_for_an_empty_field() -> None:
    r = hr.parse_rule("x-empty=")
    assert hr.matches([r], [(b"x-empty", b"")])
    assert not hr.matches([r], [(b"x-empty", b"1")])


@pytest.mark.parametrize("text, says", [
    ("x-dev", "expected NAME=VALUE or NAME~=REGEX"),
    ("=alice", "header name is missing"),
    ("~=alice", "header name is missing"),
    (":path=/api", "pseudo-headers"),
    ("x dev=alice", "is not an HTTP header name"),
    ("x@dev=alice", "is not an HTTP header name"),
    ("x" * 65 + "=a", "is not an HTTP header name"),
    ("x-dev=" + "a" * 257, "longer than 256"),
    ("x-dev=al\u00efce", "printable ASCII"),
    ("x-dev=a\x1bb", "printable ASCII"),
    ("x-dev= alice", "spaces around the value"),
    ("x-dev=alice\t", "spaces around the value"),
])
def test_bad_rules_are_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(hr.HeaderRuleError) as e:
        hr.parse_rule(text)
    assert says in str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_a_set_refuses_repeats_and_too_many() -> None:
    assert len(hr.parse_rules(["a=1", "a~=1|2", "b=1"])) == 3
    with pytest.raises(hr.HeaderRuleError, match="given twice"):
        hr.parse_rules(["a=1", "A=1"])
    with pytest.raises(hr.HeaderRuleError, match="at most 8"):
        hr.parse_rules([f"h{i}=v" for i in range(9)])


def test_rules_round_trip_through_the_lease_lists() -> None:
    rules = hr.parse_rules(["x-dev=alice", "x-t~=[a-c]+"])
    again = hr.rules_from_lists([r.as_list() for r in rules])
    assert again == rules
    assert again[1].accepts("abc") and not again[1].accepts("abd")


@pytest.mark.parametrize("items", [
    "x-dev=alice",
    [["x-dev", "=", "alice", "extra"]],
    [["x-dev", "==", "alice"]],
    [["x-dev", "=", 3]],
    [["x-dev", "~=", "(a"]],
    [["x-dev", "=", "a"]] * 9,
])
def test_lease_lists_from_the_cluster_are_checked(items: object) -> None:
    with pytest.raises(hr.HeaderRuleError):
        hr.rules_from_lists(items)


# --- matching -----------------------------------------------------------------------------


def test_names_match_whatever_their_case_and_library() -> None:
    rules = hr.parse_rules(["X-Dev=alice"])
    assert hr.matches(rules, [(b"host", b"a"), (b"x-dev", b"alice")])  # h11: lower-case bytes
    assert hr.matches(rules, [("X-DEV", "alice")])  # raw spelling, str (h2 with an encoding)
    assert not hr.matches(rules, [(b"x-dev", b"Alice")])  # values are exact
    assert not hr.matches(rules, [(b"host", b"a")])  # absent


def test_every_rule_must_match() -> None:
    rules = hr.parse_rules(["x-dev=alice", "x-tenant~=acme|globex"])
    assert hr.matches(rules, [(b"x-dev", b"alice"), (b"x-tenant", b"globex")])
    assert not hr.matches(rules, [(b"x-dev", b"alice"), (b"x-tenant", b"initech")])
    assert not hr.matches(rules, [(b"x-tenant", b"acme")])


def test_a_repeated_field_matches_when_one_value_does() -> None:
    rules = hr.parse_rules(["x-dev=alice"])
    assert hr.matches(rules, [(b"x-dev", b"bob"), (b"x-dev", b"alice")])
    # a comma-joined list is one value, matched as sent
    assert not hr.matches(rules, [(b"x-dev", b"bob, alice")])
    assert hr.matches(hr.parse_rules(["x-dev~=.*alice.*"]), [(b"x-dev", b"bob, alice")])


def test_two_rules_on_one_name_may_be_met_by_different_occurrences() -> None:
    rules = hr.parse_rules(["x-a~=1.*", "x-a~=.*9"])
    assert hr.matches(rules, [(b"x-a", b"12"), (b"x-a", b"89")])
    assert not hr.matches(rules, [(b"x-a", b"12")])


def test_surrounding_whitespace_of_a_value_is_ignored_as_http_does() -> None:
    assert hr.matches(hr.parse_rules(["x-dev=alice"]), [(b"x-dev", b" \talice ")])


def test_no_rules_match_every_request() -> None:
    assert hr.matches((), [])


def test_a_regular_expression_matches_the_whole_value() -> None:
    r = hr.parse_rule("x-dev~=alice")
    assert r.accepts("alice")
    assert not r.accepts("malice") and not r.accepts("alice2")


def test_bytes_are_read_one_character_per_byte() -> None:
    r = hr.parse_rule("x-b~=caf.")
    assert hr.matches([r], [(b"x-b", "caf\u00e9".encode("latin-1"))])
    assert not hr.matches([hr.parse_rule("x-b=caf")], [(b"x-b", b"caf\xc3\xa9")])


def test_a_literal_value_with_regex_characters_stays_literal() -> None:
    r = hr.parse_rule("x-v=1.2.3")
    assert r.accepts("1.2.3") and not r.accepts("1x2y3")


# --- the regular-expression subset -----------------------------------------------------------

# Patterns inside the subset, and what each must agree with: Python's re.fullmatch.
AGREES = [
    "", "a", "abc", "a|b", "ab|cd|", "(a|b)*", "(?:ab)+", "a?b?c?", "a*b*", "[a-c]+",
    "[^a-c]*", "[-a]", "[a-]", "[]a]", "[^]a]", r"\d+", r"\w*", r"\s", r"\D\W\S", r"[\d.]+",
    r"a\.b", r"\(\)", r"\$x", r"a\\", "a{3}", "a{2,}", "a{0,2}b", "(ab){1,3}", "(a|ab)(c|bcd)",
    "(a*)*", "(a|)+b", ".*a.*", "^ab$", "^a|b$", "v[0-9]+\\.[0-9]+", "[\\--/]+", "x{0}y",
    "(((a)))", "a(b|c(d|e)*)?f", "[a-zA-Z0-9_-]{1,8}", "\\t",
]
ALPHABET = "abcdef-./0129 _()$\\\tXYZ"


@pytest.mark.parametrize("pattern", AGREES)
def test_the_subset_agrees_with_python_re(pattern: str) -> None:
    mine = hr.Pattern(pattern)
    theirs = re.compile(pattern)
    rng = random.Random(pattern)
    samples = ["", "a", "ab", "abc", "aaa", "abcd", "ab.cd", "v1.20", "a\\", "$x", "()", "\t"]
    samples += ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 9)))
                for _ in range(400)]
    for s in samples:
        assert mine.fullmatch(s) == (theirs.fullmatch(s) is not None), (pattern, s)


@pytest.mark.parametrize("pattern, says", [
    (r"(a)\1", "backreferences"),
    ("(?=a)a", "lookaround"),
    ("(?i)a", "lookaround, flags"),
    ("(?P<n>a)", "named groups"),
    ("a*?", "lazy or possessive"),
    ("a++", "lazy or possessive"),
    ("a**", "cannot be repeated"),
    ("a{2}{3}", "cannot be repeated"),
    ("a{,3}", "starts a repetition"),
    ("a{x}", "starts a repetition"),
    ("a{", "starts a repetition"),
    ("a{101}", "go up to 100"),
    ("a{3,2}", "out of order"),
    ("[z-a]", "out of order"),
    ("(a", "missing ')'"),
    ("a)", "unbalanced ')'"),
    ("[abc", "missing ']'"),
    ("*a", "nothing to repeat"),
    ("{2}", "nothing to repeat"),
    ("a^b", "only at the start"),
    ("a$b", "only at the start"),
    (r"\b", "not supported"),
    (r"\x41", "not supported"),
    ("a\\", "trailing backslash"),
    (r"[\D]", "inside [...]"),
    ("[[:alpha:]]", "POSIX classes"),
    ("(a{100}){100}", "too large"),
])
def test_outside_the_subset_is_refused_by_name(pattern: str, says: str) -> None:
    with pytest.raises(hr.HeaderRuleError) as e:
        hr.parse_rule(f"x-dev~={pattern}")
    assert says in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("pattern, hostile, friendly", [
    (r"(a*)*b", "a" * 5000 + "c", "aaab"),
    (r"(a|aa)*c", "a" * 5000 + "b", "aaac"),
    (r"(\w+\s?)*\$", "word " * 1000 + "!", "two words$"),
    (r"(.*a){20}", "a" * 19 + "b" * 3000, "a" * 20),
])
def test_no_backtracking_on_inputs_that_make_re_take_years(pattern: str, hostile: str,
                                                           friendly: str) -> None:
    """Python's re needs seconds for 26 characters of the first three (measured: 8.6 s for
    `(a*)*b` on 26 a's, doubling per character); these values are thousands long. A
    backtracking implementation would not finish (the suite's timeout fails the test); the
    automaton takes one step per character."""
    compiled = hr.Pattern(pattern)
    assert compiled.fullmatch(hostile) is False
    assert compiled.fullmatch(friendly) is True
