"""Named crash points for crash tests (RELIABILITY T1, T2).

`AUTOPILOTD_CRASH_AT=name` (or `name:N`) makes the process `os._exit(137)` at the first (or
N-th) pass of `crash_point("name")`, exactly as a SIGKILL would leave it: no cleanup, no
flush beyond what was already made durable. Unset, a crash point costs one dict lookup.
"""

from __future__ import annotations

import os
import sys

ENV = "AUTOPILOTD_CRASH_AT"
_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= (int(nth) if nth else 1):
        sys.stderr.write(f"crash point {name} reached: exiting 137\n")
        sys.stderr.flush()
        os._exit(137)
