"""JSON with comments (VS Code's settings, tasks.json, launch.json): read, and edit in place.

VS Code's files are JSONC: `//` and `/* */` comments and trailing commas. No PyPI library both
parses them and writes them back with the user's comments and layout kept (the JSON5/JSONC
readers drop comments; the round-trip ones are young, single-maintainer projects), so this
module parses into values *with their text spans* and edits by textual replacement and
insertion: everything outside the edited span stays byte for byte.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BridgeError


class JsoncError(BridgeError):
    """The text is not JSON with comments."""


@dataclass
class Node:
    kind: str  # object, array, string, number, literal
    start: int
    end: int  # exclusive
    value: Any = None  # scalars: the value
    members: list[tuple[str, Node]] = field(default_factory=list)  # objects
    items: list[Node] = field(default_factory=list)  # arrays

    def get(self, key: str) -> Node | None:
        for name, node in self.members:
            if name == key:
                return node
        return None

    def plain(self) -> Any:
        if self.kind == "object":
            return {name: node.plain() for name, node in self.members}
        if self.kind == "array":
            return [node.plain() for node in self.items]
        return self.value


_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> JsoncError:
        line = self.text.count("\n", 0, self.pos) + 1
        col = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        return JsoncError(f"line {line} column {col}: {what}")

    def skip(self) -> None:
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            if c in " \t\r\n\ufeff":
                self.pos += 1
            elif t.startswith("//", self.pos):
                end = t.find("\n", self.pos)
                self.pos = len(t) if end < 0 else end + 1
            elif t.startswith("/*", self.pos):
                end = t.find("*/", self.pos + 2)
                if end < 0:
                    raise self.fail("unterminated /* comment")
                self.pos = end + 2
            else:
                return

    def value(self) -> Node:
        self.skip()
        t, start = self.text, self.pos
        if start >= len(t):
            raise self.fail("unexpected end of text")
        c = t[start]
        if c == "{":
            return self.container("object", "}")
        if c == "[":
            return self.container("array", "]")
        if c == '"':
            m = _STRING.match(t, start)
            if not m:
                raise self.fail("bad string")
            self.pos = m.end()
            return Node("string", start, m.end(), json.loads(m.group()))
        for word, val in (("true", True), ("false", False), ("null", None)):
            if t.startswith(word, start):
                self.pos = start + len(word)
                return Node("literal", start, self.pos, val)
        m = _NUMBER.match(t, start)
        if m and m.end() > start:
            self.pos = m.end()
            return Node("number", start, m.end(), json.loads(m.group()))
        raise self.fail(f"unexpected {c!r}")

    def container(self, kind: str, close: str) -> Node:
        node = Node(kind, self.pos, -1)
        self.pos += 1
        while True:
            self.skip()
            if self.pos < len(self.text) and self.text[self.pos] == close:
                self.pos += 1
                node.end = self.pos
                return node
            if kind == "object":
                key = self.value()
                if key.kind != "string":
                    raise self.fail("expected a quoted key")
                self.skip()
                if not self.text.startswith(":", self.pos):
                    raise self.fail("expected ':'")
                self.pos += 1
                node.members.append((key.value, self.value()))
            else:
                node.items.append(self.value())
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith(close, self.pos):
                raise self.fail(f"expected ',' or {close!r}")


def parse(text: str) -> Node:
    p = _Parser(text)
    node = p.value()
    p.skip()
    if p.pos != len(text):
        raise p.fail("unexpected text after the value")
    return node


def loads(text: str) -> Any:
    """The value of a JSONC text (comments and trailing commas allowed)."""
    return parse(text).plain()


# -- editing -------------------------------------------------------------------------------


def _indent_at(text: str, pos: int) -> str:
    line_start = text.rfind("\n", 0, pos) + 1
    m = re.match(r"[ \t]*", text[line_start:pos])
    return m.group() if m else ""


def _dump(value: Any, indent: str, unit: str) -> str:
    """`value` as JSON whose first line goes at the cursor and the rest at `indent`."""
    lines = json.dumps(value, indent=unit, ensure_ascii=False).split("\n")
    return "\n".join([lines[0]] + [indent + ln for ln in lines[1:]])


def _unit(text: str) -> str:
    """The file's indentation step (its first indented line's), else 4 spaces."""
    m = re.search(r"\n([ \t]+)\S", text)
    return m.group(1) if m else "    "


def _comma_follows(text: str, after: int, before: int) -> bool:
    """Whether a comma (outside comments) follows position `after`, before `before`."""
    p = _Parser(text)
    p.pos = after
    p.skip()
    return p.pos < before and text.startswith(",", p.pos)


def _insert_into(text: str, container: Node, entry: str, unit: str) -> str:
    """`entry` (an array item, or `"key": value` for an object) appended to `container`: a
    comma right after its last element if there is none, the entry on a line of its own
    before the closing bracket, so comments around the last element stay where they are."""
    close = container.end - 1
    last = (container.items[-1] if container.kind == "array"
            else container.members[-1][1] if container.members else None)
    outer = _indent_at(text, container.start)
    if last is None:
        return (text[:container.start + 1] + "\n" + outer + unit + entry + "\n" + outer
                + text[close:])
    indent = _indent_at(text, last.start)
    if "\n" not in text[container.start:close]:  # a one-line container stays one line
        comma = "" if _comma_follows(text, last.end, close) else ","
        return text[:last.end] + comma + " " + entry + text[last.end:]
    if not _comma_follows(text, last.end, close):
        text = text[:last.end] + "," + text[last.end:]
        close += 1
    line_start = text.rfind("\n", 0, close) + 1
    if text[line_start:close].strip() == "":  # the bracket on a line of its own
        return text[:line_start] + indent + entry + "\n" + text[line_start:]
    return text[:close] + "\n" + indent + entry + "\n" + outer + text[close:]


def upsert(text: str, array_key: str, match_key: str, item: dict[str, Any],
           skeleton: dict[str, Any]) -> str:
    """`text` (a JSONC object; empty means a new file made from `skeleton`) with `item` in
    the array under `array_key`: replacing the element whose `match_key` equals item's, or
    appended. Comments and everything else are kept as they were."""
    if not text.strip():
        base = dict(skeleton)
        base[array_key] = [item]
        return json.dumps(base, indent=4, ensure_ascii=False) + "\n"
    root = parse(text)
    if root.kind != "object":
        raise JsoncError("the top level is not an object")
    unit = _unit(text)
    array = root.get(array_key)
    if array is None:
        indent = _indent_at(text, root.start) + unit
        entry = json.dumps(array_key) + ": [" + _dump([item], indent, unit)[1:]
        return _insert_into(text, root, entry, unit)
    if array.kind != "array":
        raise JsoncError(f'"{array_key}" is not an array')
    for element in array.items:
        if element.kind == "object" and element.plain().get(match_key) == item[match_key]:
            indent = _indent_at(text, element.start)
            return text[:element.start] + _dump(item, indent, unit) + text[element.end:]
    if array.items:
        indent = _indent_at(text, array.items[-1].start)
    else:
        indent = _indent_at(text, array.start) + unit
    return _insert_into(text, array, _dump(item, indent, unit), unit)
