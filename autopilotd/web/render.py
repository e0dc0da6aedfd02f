"""The jinja2 environment: autoescape everywhere, undefined names are errors, a few filters.

Text that comes from outside (payment descriptions, event fields, later Nostr content) is
always escaped: no template uses `|safe`, and a test keeps it that way.
"""

from __future__ import annotations

import time
from typing import Any

import jinja2


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("autopilotd.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sats"] = sats
    env.filters["clock"] = clock
    env.filters["ago"] = ago
    env.filters["until"] = until
    env.filters["duration"] = duration
    env.filters["short"] = short
    env.filters["size"] = size
    env.filters["seconds"] = seconds
    return env


def sats(value: Any) -> str:
    """1234567 → '1 234 567' (thin spaces); None → '—' (not known yet, never a made-up 0)."""
    if value is None:
        return "—"
    return f"{int(value):,}".replace(",", "\u2009")


def clock(ts: Any) -> str:
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))


def ago(ts: Any) -> str:
    if ts is None:
        return "—"
    return duration(max(0.0, time.time() - float(ts))) + " ago"


def until(ts: Any) -> str:
    """A deadline: 'in 12 s', or 'passed' once it has."""
    if ts is None:
        return "—"
    left = float(ts) - time.time()
    return "passed" if left <= 0 else "in " + duration(left)


def duration(seconds: Any) -> str:
    s = int(float(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def short(value: Any, keep: int = 10) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 2 * keep + 1 else f"{text[:keep]}…{text[-keep:]}"


def size(value: Any) -> str:
    """A file's size: 512 → '512 B', 12345 → '12.1 KiB'; None → '—'."""
    if value is None:
        return "—"
    n = int(value)
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def seconds(value: Any) -> str:
    """Measured seconds (a run's wall clock, its CPU time): 0.1234 → '0.12 s'; None → '—'."""
    return "—" if value is None else f"{float(value):.2f} s"
