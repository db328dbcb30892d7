"""Header rules: which requests a personal swap takes (`--header NAME=VALUE`, `NAME~=REGEX`).

Pure: parsing a rule, and matching a set of rules against one request's header fields as h11
(`Request.headers`: (bytes, bytes) pairs, names lower-case) and h2 (pairs of bytes or str)
hand them over. The design is docs/design/cluster-keeps-serving.md, section 11:

- `NAME=VALUE`: some field NAME has exactly VALUE; `NAME~=REGEX`: some field NAME has a value
  REGEX matches in full (anchored at both ends). Every rule of a set must match.
- NAME is an HTTP field name (RFC 9110 token), matched without regard to case; pseudo-headers
  (`:path`) are refused. A field sent several times matches when any one of its values does.
- REGEX is a safe subset of the usual syntax, compiled to an automaton and matched without
  backtracking (Thompson's construction, as RE2 and Go's regexp do), so the time a match takes
  is linear in the value's length whatever the pattern and the value: a request in the
  cluster's path can never make the router spin. Python's `re` backtracks and is not used to
  match.

Rule text and patterns are printable ASCII; a request's values are read as Latin-1 (one
character per byte), with the spaces and tabs around them stripped as HTTP does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_NAME = 64  # bytes of a header name in a rule
MAX_VALUE = 256  # characters of a rule's value or pattern
MAX_REPEAT = 100  # the largest bound of {m,n}
MAX_STATES = 2000  # automaton states of one pattern (counted repetition is expanded)
MAX_RULES = 8  # rules of one swap (protocol.MAX_RULES_PER_LEASE in the design)
_CACHE = 4096  # remembered automaton transitions per pattern before the memory starts over

EQUALS = "="
MATCHES = "~="
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_OWS = " \t"


class HeaderRuleError(ValueError):
    """A rule that cannot be used; the message names it and what is wrong (nothing changed).

    A ValueError, not bridge's BridgeError: the sidecar imports nothing of bridge. bridge's
    option parsing turns it into its one-line user error (NothingChanged) where it reads
    `--header`; the router refuses a lease whose rules raise it."""


# --- the regular-expression subset -------------------------------------------------------


@dataclass(frozen=True)
class _Chars:
    """A set of characters: single ones and ranges, or everything but those."""

    singles: frozenset[str] = frozenset()
    ranges: tuple[tuple[str, str], ...] = ()
    negated: bool = False

    def has(self, c: str) -> bool:
        inside = c in self.singles or any(lo <= c <= hi for lo, hi in self.ranges)
        return inside != self.negated


_DIGIT = _Chars(ranges=(("0", "9"),))
_WORD = _Chars(singles=frozenset("_"), ranges=(("0", "9"), ("A", "Z"), ("a", "z")))
_SPACE = _Chars(singles=frozenset(" \t\r\n\f\v"))
_ANY = _Chars(negated=True)
_SHORTHANDS = {"d": _DIGIT, "w": _WORD, "s": _SPACE}


def _negate(cs: _Chars) -> _Chars:
    return _Chars(cs.singles, cs.ranges, not cs.negated)


# AST: ("chars", _Chars) | ("cat", [nodes]) | ("alt", [nodes]) | ("rep", node, lo, hi|None)
Node = tuple


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def fail(self, why: str) -> HeaderRuleError:
        return HeaderRuleError(f"regular expression {self.p!r}: {why}")

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def parse(self) -> Node:
        body = self.p
        start, end = 0, len(body)
        if body.startswith("^"):
            start = 1
        if body.endswith("$") and not _escaped_at(body, len(body) - 1) and end > start:
            end -= 1
        self.p, self.i = body[:end], start
        node = self.alternation()
        if self.i < len(self.p):  # only a stray ")" stops the top level early
            raise self.fail(f"unbalanced ')' at position {self.i + 1}")
        self.p = body
        return node

    def alternation(self) -> Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self) -> Node:
        items: list[Node] = []
        while (c := self.peek()) is not None and c not in "|)":
            items.append(self.quantified(self.atom()))
        return ("cat", items)

    def atom(self) -> Node:
        c = self.p[self.i]
        self.i += 1
        if c == "(":
            if self.p.startswith("?", self.i):
                if not self.p.startswith("?:", self.i):
                    raise self.fail("only (...) and (?:...) groups are supported (no lookaround, "
                                    "flags, named groups or other (? forms)")
                self.i += 2
            inner = self.alternation()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return inner
        if c == "[":
            return ("chars", self.char_class())
        if c == ".":
            return ("chars", _ANY)
        if c == "\\":
            return ("chars", self.escape(in_class=False))
        if c in "*+?":
            raise self.fail(f"nothing to repeat before {c!r} at position {self.i}")
        if c == "{":
            raise self.fail(f"nothing to repeat before '{{' at position {self.i} (write \\{{ "
                            "for the character)")
        if c in "^$":
            raise self.fail(f"{c!r} is allowed only at the start (^) or the end ($): the whole "
                            "value is always matched")
        return ("chars", _Chars(singles=frozenset(c)))

    def escape(self, in_class: bool) -> _Chars:
        c = self.peek()
        if c is None:
            raise self.fail("a trailing backslash")
        self.i += 1
        if c in _SHORTHANDS:
            return _SHORTHANDS[c]
        if c.lower() in _SHORTHANDS:
            if in_class:
                raise self.fail(f"\\{c} inside [...] is not supported; use [^...]")
            return _negate(_SHORTHANDS[c.lower()])
        if c == "t":
            return _Chars(singles=frozenset("\t"))
        if c.isdigit():
            raise self.fail(f"\\{c}: backreferences are not supported")
        if c.isalnum():
            raise self.fail(f"\\{c} is not supported (escapes: \\d \\w \\s \\D \\W \\S \\t, and "
                            "\\ before a punctuation character)")
        return _Chars(singles=frozenset(c))

    def char_class(self) -> _Chars:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        singles: set[str] = set()
        ranges: list[tuple[str, str]] = []
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.fail("missing ']'")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self.class_char()
            if isinstance(lo, _Chars):
                singles |= lo.singles
                ranges.extend(lo.ranges)
                continue
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.i += 1
                hi = self.class_char()
                if isinstance(hi, _Chars):
                    raise self.fail("a range cannot end in a class like \\d")
                if hi < lo:
                    raise self.fail(f"range {lo}-{hi} is out of order")
                ranges.append((lo, hi))
            else:
                singles.add(lo)
        return _Chars(frozenset(singles), tuple(ranges), negated)

    def class_char(self) -> str | _Chars:
        c = self.p[self.i]
        self.i += 1
        if c == "\\":
            got = self.escape(in_class=True)
            if got.ranges or got.negated or len(got.singles) != 1:
                return got
            return next(iter(got.singles))
        if c == "[" and self.peek() in (":", "=", "."):
            raise self.fail("POSIX classes like [[:alpha:]] are not supported")
        return c

    def quantified(self, node: Node) -> Node:
        c = self.peek()
        if c is None or c not in "*+?{":
            return node
        self.i += 1
        if c == "*":
            lo, hi = 0, None
        elif c == "+":
            lo, hi = 1, None
        elif c == "?":
            lo, hi = 0, 1
        else:
            lo, hi = self.bounds()
        nxt = self.peek()
        if nxt is not None and nxt in "?+":
            raise self.fail(f"lazy or possessive repetition ({c}{nxt}) is not supported")
        if nxt is not None and nxt in "*{":
            raise self.fail(f"a repetition cannot be repeated ({c}{nxt}); use a group")
        return ("rep", node, lo, hi)

    def bounds(self) -> tuple[int, int | None]:
        close = self.p.find("}", self.i)
        spec = self.p[self.i:close] if close >= 0 else ""
        m = re.fullmatch(r"(\d{1,3})(,(\d{0,3}))?", spec)
        if close < 0 or m is None:
            raise self.fail("'{' starts a repetition {m}, {m,} or {m,n} (write \\{ for the "
                            "character)")
        self.i = close + 1
        lo = int(m.group(1))
        hi: int | None = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
        if hi is not None and hi < lo:
            raise self.fail(f"{{{spec}}}: the bounds are out of order")
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.fail(f"{{{spec}}}: repetition bounds go up to {MAX_REPEAT}")
        return lo, hi


def _escaped_at(s: str, i: int) -> bool:
    """Whether the character at i is preceded by an odd number of backslashes."""
    n = 0
    while i - n - 1 >= 0 and s[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


class _Nfa:
    """Thompson automaton: state k is ("chars", _Chars, next) | ("split", a, b) | ("match",)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.states: list[list] = []

    def add(self, state: list) -> int:
        if len(self.states) >= MAX_STATES:
            raise HeaderRuleError(f"regular expression {self.pattern!r} is too large (more than "
                                  f"{MAX_STATES} automaton states; large {{m,n}} repeated)")
        self.states.append(state)
        return len(self.states) - 1

    # A fragment is (start, dangling exits): each exit is (state, slot) to be patched.
    def build(self, node: Node) -> tuple[int, list[tuple[int, int]]]:
        kind = node[0]
        if kind == "chars":
            s = self.add(["chars", node[1], -1])
            return s, [(s, 2)]
        if kind == "cat":
            if not node[1]:
                s = self.add(["split", -1, -1])  # an empty sequence: a pass-through
                self.states[s][2] = -2  # only slot 1 is used
                return s, [(s, 1)]
            start, outs = self.build(node[1][0])
            for child in node[1][1:]:
                s2, o2 = self.build(child)
                self.patch(outs, s2)
                outs = o2
            return start, outs
        if kind == "alt":
            starts, outs = [], []
            for child in node[1]:
                s, o = self.build(child)
                starts.append(s)
                outs += o
            start = starts[-1]
            for s in reversed(starts[:-1]):
                start = self.add(["split", s, start])
            return start, outs
        _, child, lo, hi = node
        pieces: list[tuple[int, list[tuple[int, int]]]] = []
        for _ in range(lo):
            pieces.append(self.build(child))
        if hi is None:
            s, o = self.build(child)
            loop = self.add(["split", s, -1])
            self.patch(o, loop)
            pieces.append((loop, [(loop, 2)]))
        else:
            for _ in range(hi - lo):
                s, o = self.build(child)
                opt = self.add(["split", s, -1])
                pieces.append((opt, o + [(opt, 2)]))
        if not pieces:
            return self.build(("cat", []))
        start, outs = pieces[0]
        for s, o in pieces[1:]:
            self.patch(outs, s)
            outs = o
        return start, outs

    def patch(self, outs: list[tuple[int, int]], target: int) -> None:
        for s, slot in outs:
            self.states[s][slot] = target


class Pattern:
    """A compiled pattern of the safe subset; `fullmatch(value)` in time linear in the value."""

    def __init__(self, text: str) -> None:
        self.text = text
        nfa = _Nfa(text)
        start, outs = nfa.build(_Parser(text).parse())
        final = nfa.add(["match"])
        nfa.patch(outs, final)
        self._states = nfa.states
        self._final = final
        self._start = self._closure([start])
        self._steps: dict[tuple[frozenset[int], str], frozenset[int]] = {}

    def _closure(self, seeds: Iterable[int]) -> frozenset[int]:
        seen: set[int] = set()
        stack = list(seeds)
        while stack:
            s = stack.pop()
            if s < 0 or s in seen:
                continue
            seen.add(s)
            st = self._states[s]
            if st[0] == "split":
                stack.append(st[1])
                stack.append(st[2])
        return frozenset(s for s in seen if self._states[s][0] != "split")

    def _step(self, current: frozenset[int], c: str) -> frozenset[int]:
        key = (current, c)
        got = self._steps.get(key)
        if got is None:
            nxt = [st[2] for s in current
                   if (st := self._states[s])[0] == "chars" and st[1].has(c)]
            got = self._closure(nxt)
            if len(self._steps) >= _CACHE:
                self._steps.clear()  # bounded memory; correctness does not depend on it
            self._steps[key] = got
        return got

    def fullmatch(self, value: str) -> bool:
        current = self._start
        for c in value:
            current = self._step(current, c)
            if not current:
                return False
        return self._final in current

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


# --- rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str  # lower-case
    op: str  # EQUALS | MATCHES
    value: str
    pattern: Pattern | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"

    def as_list(self) -> list[str]:
        """The rule as the router's lease list carries it: [name, op, value]."""
        return [self.name, self.op, self.value]

    def accepts(self, value: str) -> bool:
        """Whether one field value (already stripped) satisfies the rule."""
        if self.pattern is None:
            return value == self.value
        return self.pattern.fullmatch(value)


def _printable_ascii(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


def make_rule(name: str, op: str, value: str) -> Rule:
    """A validated rule from its parts; HeaderRuleError names what is wrong."""
    shown = f"{name}{op}{value}" if _printable_ascii(name + value) else repr(name + op + value)
    where = f"header rule {shown}"
    if op not in (EQUALS, MATCHES):
        raise HeaderRuleError(f"{where}: the operator is '=' or '~='")
    if name.startswith(":"):
        raise HeaderRuleError(f"{where}: pseudo-headers like {name} are not matched; name an "
                              "ordinary header")
    if not name:
        raise HeaderRuleError(f"{where}: the header name is missing (NAME=VALUE or NAME~=REGEX)")
    if len(name) > MAX_NAME or not _TOKEN.match(name):
        raise HeaderRuleError(f"{where}: {name[:MAX_NAME]!r} is not an HTTP header name "
                              f"(letters, digits and !#$%&'*+-.^_`|~, at most {MAX_NAME})")
    if len(value) > MAX_VALUE:
        raise HeaderRuleError(f"{where[:80]}...: the value is longer than {MAX_VALUE} characters")
    if not _printable_ascii(value.replace("\t", " ")):
        raise HeaderRuleError(f"{where}: the value must be printable ASCII")
    if value != value.strip(_OWS):
        raise HeaderRuleError(f"{where}: spaces around the value can never match (HTTP strips "
                              "them)")
    pattern = Pattern(value) if op == MATCHES else None
    return Rule(name.lower(), op, value, pattern)


def parse_rule(text: str) -> Rule:
    """`NAME=VALUE` or `NAME~=REGEX` (the first '=' splits; '~' just before it makes it a
    regular expression, so a name cannot end in '~')."""
    eq = text.find("=")
    if eq < 0:
        raise HeaderRuleError(f"header rule {text[:80]!r}: expected NAME=VALUE or NAME~=REGEX")
    if eq > 0 and text[eq - 1] == "~":
        return make_rule(text[:eq - 1], MATCHES, text[eq + 1:])
    return make_rule(text[:eq], EQUALS, text[eq + 1:])


def parse_rules(texts: Sequence[str]) -> tuple[Rule, ...]:
    """The rules of one swap (`--header`, repeated); all must match. The same rule twice is
    refused (it says nothing more and is likely a typo of another)."""
    if len(texts) > MAX_RULES:
        raise HeaderRuleError(f"{len(texts)} header rules; at most {MAX_RULES}")
    rules = tuple(parse_rule(t) for t in texts)
    for i, r in enumerate(rules):
        if r in rules[:i]:
            raise HeaderRuleError(f"header rule {r} is given twice")
    return rules


def rules_from_lists(items: object) -> tuple[Rule, ...]:
    """Rules as a lease carries them ([[name, op, value], ...], read from the cluster: anything
    else is an error, never half-applied)."""
    if not isinstance(items, list) or len(items) > MAX_RULES:
        raise HeaderRuleError(f"header rules must be a list of at most {MAX_RULES} "
                              "[name, op, value] triples")
    out = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 3
                and all(isinstance(x, str) for x in item)):
            raise HeaderRuleError("a header rule must be a [name, op, value] triple of strings")
        out.append(make_rule(*item))
    return tuple(out)


def _text(x: bytes | str) -> str:
    return x.decode("latin-1") if isinstance(x, (bytes, bytearray)) else x


def matches(rules: Sequence[Rule], headers: Iterable[tuple[bytes | str, bytes | str]]) -> bool:
    """Whether a request with these header fields satisfies every rule (no rules: every
    request). A field sent several times satisfies a rule when one of its values does."""
    if not rules:
        return True
    wanted = {r.name for r in rules}
    values: dict[str, list[str]] = {}
    for raw_name, raw_value in headers:
        name = _text(raw_name).lower()
        if name in wanted:
            values.setdefault(name, []).append(_text(raw_value).strip(_OWS))
    return all(any(r.accepts(v) for v in values.get(r.name, ())) for r in rules)
