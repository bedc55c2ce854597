"""``harm-horizon bench``: the benchmark suites, speed measured side by side in one run."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["best_seconds"]


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fewest seconds one call of ``fn()`` took in ``repeats`` calls (a floor's timing: the
    machine's noise only ever adds; any warm-up is the caller's)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
