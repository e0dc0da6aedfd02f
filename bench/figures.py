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
