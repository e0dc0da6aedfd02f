"""Child processes that do not outlive the process that started them.

Two ways, for two kinds of child:

- `die_with_parent` (a `preexec_fn`): on Linux the kernel sends the child SIGTERM when its
  parent dies, even by SIGKILL. Elsewhere it is a no-op.
- `owner_gone`: a long-lived child that detaches on purpose (the devnet supervisor) polls a
  named owner process and stops itself once the owner is gone; this works on every system.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import sys

from autopilotd.manifest import pid_alive

OWNER_POLL_S = 1.0


def die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def owner_gone(owner: int, poll_s: float = OWNER_POLL_S) -> None:
    """Return once process `owner` no longer runs (a pid has no event to wait on: poll it)."""
    while True:
        if not pid_alive(owner):
            return
        await asyncio.sleep(poll_s)
