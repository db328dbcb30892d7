"""The one read-check-patch loop: a merge patch conditional on the resourceVersion just read,
read again and retried when someone else wrote in between (409 Conflict)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bridge.errors import BridgeError
from bridge.kube.client import Conflict, Obj

CONFLICT_RETRIES = 5


class KeptChanging(BridgeError):
    """Every attempt lost to a concurrent write."""


def with_resource_version(patch: dict[str, Any], obj: Obj) -> dict[str, Any]:
    """`patch` made conditional on `obj`'s resourceVersion (when it has one)."""
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if not rv:
        return patch
    meta = dict(patch.get("metadata") or {})
    meta["resourceVersion"] = rv
    return {**patch, "metadata": meta}


async def patch_when(read: Callable[[], Awaitable[Obj]],
                     write: Callable[[dict[str, Any]], Awaitable[Obj]],
                     decide: Callable[[Obj], dict[str, Any] | None], *, what: str,
                     attempts: int = CONFLICT_RETRIES) -> bool:
    """Read the object, let `decide` return the patch to apply (None: leave it; raising refuses),
    write it conditional on what was read; on Conflict start over. True when a patch was
    written, False when `decide` said no; KeptChanging after `attempts` conflicts."""
    for _ in range(attempts):
        obj = await read()
        patch = decide(obj)
        if patch is None:
            return False
        try:
            await write(with_resource_version(patch, obj))
            return True
        except Conflict:
            continue
    raise KeptChanging(f"{what} kept changing ({attempts} conflicts in a row)")
