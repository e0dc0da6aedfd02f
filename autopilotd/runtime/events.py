"""Domain events: numbered, kept in a bounded ring for `events.wait`, written to the session log.

The names are the observable contract of ARCHITECTURE §5 (`provider.accepted`,
`wallet.payment_received` …); this module only carries them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol


class EventSink(Protocol):
    def write_event(self, event: Event) -> None: ...


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    name: str
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "name": self.name, "fields": self.fields}


class EventBus:
    """Publishes events in order; waiters long-poll for ids after the one they last saw."""

    def __init__(self, sink: EventSink | None = None, keep: int = 2000) -> None:
        self._events: deque[Event] = deque(maxlen=keep)
        self._next_id = 1
        self._sink = sink
        self._changed = asyncio.Event()

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, name: str, **fields: Any) -> Event:
        event = Event(self._next_id, time.time(), name, fields)
        self._next_id += 1
        self._events.append(event)
        if self._sink is not None:
            self._sink.write_event(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return event

    def since(self, after: int, limit: int) -> tuple[list[Event], bool]:
        """Events with id > after (oldest first, at most `limit`); True if some were dropped."""
        missed = bool(self._events) and after < self._events[0].id - 1
        out = [e for e in self._events if e.id > after][:limit]
        return out, missed

    async def wait(self, after: int, timeout: float, limit: int) -> tuple[list[Event], bool]:
        """Like `since`, but wait up to `timeout` seconds for the first new event."""
        try:
            async with asyncio.timeout(timeout):
                while self.last_id <= after:
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self.since(after, limit)
