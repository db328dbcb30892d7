"""``python -m sidecar`` with the tuning knobs of ``$BRIDGE_BENCH_TUNING`` applied first
(only for ``scripts/bench --tuning``; the benchmark proper runs the sidecar untouched)."""

from __future__ import annotations

import json
import os
import sys

from tests.equipment.bench import knobs


def main() -> int:
    try:
        knobs.apply(json.loads(os.environ.pop(knobs.ENV, "{}")), "sidecar")
    except ValueError as exc:
        print(f"sidecar_tuned: {exc}", file=sys.stderr, flush=True)
        return 2
    from sidecar.__main__ import main as sidecar_main

    return sidecar_main()


if __name__ == "__main__":
    sys.exit(main())
