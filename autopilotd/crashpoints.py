"""Named crash points for crash tests (RELIABILITY T1, T2).

`AUTOPILOTD_CRASH_AT=name` (or `name:N`) makes the process `os._exit(137)` at the first (or
N-th) pass of `crash_point("name")`, exactly as a SIGKILL would leave it: no cleanup, no
flush beyond what was already made durable. With `AUTOPILOTD_CRASH_HOW=term` the process
instead sends itself SIGTERM there and carries on, so the test sees the clean stop a service
manager would ask for at exactly that point. Unset, a crash point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "AUTOPILOTD_CRASH_AT"
HOW_ENV = "AUTOPILOTD_CRASH_HOW"
_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != (int(nth) if nth else 1):
        return
    if os.environ.get(HOW_ENV) == "term":
        sys.stderr.write(f"crash point {name} reached: SIGTERM\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        return
    sys.stderr.write(f"crash point {name} reached: exiting 137\n")
    sys.stderr.flush()
    os._exit(137)
