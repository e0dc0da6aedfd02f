"""The latency figures the bench scripts print: one row per measure, in milliseconds."""

from __future__ import annotations

import math
import statistics
from typing import Any


def latency_row(name: str, seconds: list[float]) -> dict[str, Any]:
    """`name`, how many samples, and their median, 90th percentile and maximum.

    The 90th percentile is the nearest-rank one: the smallest sample at or above 90 % of them.
    """
    xs = sorted(seconds)
    return {
        "measure": name,
        "n": len(xs),
        "p50_ms": round(statistics.median(xs) * 1000, 1),
        "p90_ms": round(xs[math.ceil(0.9 * len(xs)) - 1] * 1000, 1),
        "max_ms": round(xs[-1] * 1000, 1),
    }


TABLE_HEADER = f"{'measure':<30}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"


def percentile(xs: list[float], q: float) -> float:
    """The nearest-rank q-th percentile: the smallest sample at or above q % of them."""
    s = sorted(xs)
    return s[math.ceil(q / 100 * len(s)) - 1]


def table_row(name: str, seconds: list[float]) -> str:
    """One line under TABLE_HEADER: how many samples, their p50, p95, p99 and max in ms."""
    ms = [x * 1000 for x in seconds]
    return (
        f"{name:<30}{len(ms):>7}{statistics.median(ms):>9.1f}{percentile(ms, 95):>9.1f}"
        f"{percentile(ms, 99):>9.1f}{max(ms):>9.1f}"
    )
