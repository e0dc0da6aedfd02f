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
PR_SET_PDEATHSIG = 1
# Looked up here, in the parent: a child forked from a threaded process must not load a library
# (the loader's lock may be held by a thread that does not exist in the child).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the parent dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def owner_gone(owner: int, poll_s: float = OWNER_POLL_S) -> None:
    """Return once process `owner` no longer runs (a pid has no event to wait on: poll it)."""
    while True:
        if not pid_alive(owner):
            return
        await asyncio.sleep(poll_s)
