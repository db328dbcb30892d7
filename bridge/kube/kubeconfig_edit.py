"""Writing renewed tokens back into a kubeconfig file, as client-go's persister does.

client-go rewrites the whole file (its own key order and style, comments gone) under a
`<file>.lock`. Here the same lock is taken (so kubectl and bridge do not write at once), the
file is read afresh, and only the changed values are replaced where they stand: every other
line, comment and quoting stays as the user wrote it. The edit is checked by parsing the result,
which must equal the file's data with just those values changed; when the YAML does not allow an
edit in place (a flow mapping, a key that is missing where there is nothing to add it after),
the document is written out whole instead (keys in their order, comments lost), as kubectl would.
The new file replaces the old one atomically (a temporary file in the same directory, renamed
over it, the old file's mode kept; a symlinked kubeconfig is written where the link points).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

LOCK_WAIT = 2.0  # seconds to wait for another writer's lock
PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._~+/=-]*")
PATH = ("users", "user", "auth-provider", "config")


class CannotEdit(Exception):
    pass


def _get(node: Any, key: str) -> tuple[Any, Any] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k, v
    return None


def _user_config(data: Any, user: str) -> dict[str, Any]:
    for entry in (data or {}).get("users") or []:
        if isinstance(entry, dict) and entry.get("name") == user:
            config = ((entry.get("user") or {}).get("auth-provider") or {}).get("config")
            if isinstance(config, dict):
                return config
    raise ValueError(f"the kubeconfig has no user {user!r} with an auth-provider config")


def provider_config(text: str, user: str) -> dict[str, Any]:
    """The auth-provider config of `user` in a kubeconfig's text."""
    return _user_config(yaml.safe_load(text), user)


def _render(value: str, style: str | None) -> str:
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    if not style and PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def _in_place(text: str, user: str, values: Mapping[str, str]) -> str:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    users = _get(root, "users")
    if users is None or not isinstance(users[1], yaml.SequenceNode):
        raise CannotEdit
    config = None
    for item in users[1].value:
        name = _get(item, "name")
        if name is not None and isinstance(name[1], yaml.ScalarNode) and name[1].value == user:
            node = _get(item, "user")
            node = _get(node[1], "auth-provider") if node else None
            node = _get(node[1], "config") if node else None
            config = node[1] if node else None
            break
    if not isinstance(config, yaml.MappingNode) or not config.value:
        raise CannotEdit
    edits: list[tuple[int, int, str]] = []
    for key, value in values.items():
        pair = _get(config, key)
        if pair is not None:
            node = pair[1]
            if (not isinstance(node, yaml.ScalarNode) or node.style not in (None, "", '"', "'")
                    or node.start_mark.index >= node.end_mark.index):
                raise CannotEdit
            edits.append((node.start_mark.index, node.end_mark.index,
                          _render(value, node.style)))
        elif config.flow_style:
            raise CannotEdit
        else:  # a new line after the mapping's last entry, at its keys' column
            end = config.value[-1][1].end_mark.index
            column = config.value[0][0].start_mark.column
            line = " " * column + f"{key}: {_render(value, None)}"
            if end > 0 and text[end - 1] == "\n":
                edits.append((end, end, line + "\n"))
            else:
                newline = text.find("\n", end)
                at = len(text) if newline < 0 else newline
                edits.append((at, at, "\n" + line))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def set_provider_values(text: str, user: str, values: Mapping[str, str]) -> str:
    """The kubeconfig text with `users[name=user].user.auth-provider.config[key] = value`
    for each of `values`; raises ValueError when there is no such user."""
    data = yaml.safe_load(text)
    expected = copy.deepcopy(data)
    _user_config(expected, user).update(values)
    with contextlib.suppress(CannotEdit, yaml.YAMLError):
        edited = _in_place(text, user, values)
        if yaml.safe_load(edited) == expected:
            return edited
    if text.lstrip().startswith("{"):
        return json.dumps(expected, indent=2) + "\n"
    return str(yaml.safe_dump(expected, default_flow_style=False, sort_keys=False))


@contextlib.contextmanager
def locked(path: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """client-go's lock: `<path>.lock` created exclusively, removed after."""
    lock = path + ".lock"
    deadline = time.monotonic() + wait
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            break
        except FileExistsError:
            if time.monotonic() >= deadline:
                raise OSError(f"{lock} exists (another program is writing the kubeconfig, "
                              "or left the lock behind)") from None
            time.sleep(0.05)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)


def write_atomically(path: str, text: str) -> None:
    real = os.path.realpath(path)
    mode = os.stat(real).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real), prefix="." + os.path.basename(real),
                               suffix=".bridge-tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def persist(path: str, user: str, values: Mapping[str, str]) -> bool:
    """Write `values` into the user's auth-provider config in the file; False when the file
    already held them. Raises OSError or ValueError when it cannot."""
    with locked(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = set_provider_values(text, user, values)
        if new == text:
            return False
        write_atomically(path, new)
        return True
