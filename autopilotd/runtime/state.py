"""The one writer of the Snapshot, and the waiters that wake on change."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from autopilotd.runtime.snapshot import Snapshot


class StateStore:
    """Holds the current Snapshot; `update` publishes a new one with `seq + 1`.

    Updates are synchronous (no await inside), so in one event loop they are atomic: there is
    exactly one writer at a time by construction.
    """

    def __init__(self, initial: Snapshot) -> None:
        self._snapshot = initial
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[Snapshot, Snapshot], None]] = []

    @property
    def current(self) -> Snapshot:
        return self._snapshot

    def subscribe(self, listener: Callable[[Snapshot, Snapshot], None]) -> None:
        """Call `listener(old, new)` after every change (it must not block or raise)."""
        self._listeners.append(listener)

    def update(self, fn: Callable[[Snapshot], Snapshot]) -> Snapshot:
        """Replace the snapshot with `fn(current)`, stamped `seq + 1`, and wake the waiters."""
        old = self._snapshot
        new = dataclasses.replace(fn(old), seq=old.seq + 1)
        self._snapshot = new
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in self._listeners:
            listener(old, new)
        return new

    def replace(self, **changes: Any) -> Snapshot:
        """Shorthand for `update` with `dataclasses.replace(current, **changes)`."""
        return self.update(lambda s: dataclasses.replace(s, **changes))

    async def wait_for_change(self, after_seq: int, timeout: float | None = None) -> Snapshot:
        """Return the first snapshot with `seq > after_seq`, or the current one at the timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self._snapshot.seq <= after_seq:
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self._snapshot
