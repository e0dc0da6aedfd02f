"""The one store of the Snapshot, the writers of its sections, and the waiters on change.

Each section of the Snapshot has exactly one owner. The owner asks the store for the
section's writer once (`writer(name)`; a second request for the same section is refused) and
writes only through it. A write that changes nothing publishes nothing, so an idle daemon's
`seq` stands still. A write that changes something publishes a new frozen Snapshot with
`seq + 1`, wakes the waiters, calls the listeners, and, when the section's lifecycle `state`
moved, publishes the domain event `<section>.state_changed` (or the section's own name for
it, e.g. the provider's `provider.mode_changed` of the observable contract).

Updates are synchronous (no await inside), so in one event loop they are atomic.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from autopilotd.runtime.clock import Clock, SystemClock
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.snapshot import Snapshot

T = TypeVar("T")

SECTIONS = frozenset(f.name for f in dataclasses.fields(Snapshot) if f.name not in ("seq", "facts"))


class StateStore:
    """Holds the current Snapshot; see the module docstring."""

    def __init__(
        self, initial: Snapshot, events: EventBus | None = None, clock: Clock | None = None
    ) -> None:
        self._snapshot = initial
        self._events = events or EventBus()
        self._clock = clock or SystemClock()
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[Snapshot, Snapshot], None]] = []
        self._owners: set[str] = set()

    @property
    def current(self) -> Snapshot:
        return self._snapshot

    def writer(self, section: str, *, event: str | None = None) -> SectionWriter[Any]:
        """The one writer of `section`; `event` names its state-change event if not the default."""
        if section not in SECTIONS:
            raise ValueError(f"the snapshot has no section {section!r}")
        if section in self._owners:
            raise ValueError(f"section {section!r} already has its writer")
        self._owners.add(section)
        return SectionWriter(self, section, event or f"{section}.state_changed")

    def subscribe(self, listener: Callable[[Snapshot, Snapshot], None]) -> Callable[[], None]:
        """Call `listener(old, new)` after every change (it must not block or raise).

        Returns the unsubscribe.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def update(self, fn: Callable[[Snapshot], Snapshot]) -> Snapshot:
        """Replace the snapshot with `fn(current)`, stamped `seq + 1`, and wake the waiters.

        For the daemon's own bookkeeping and tests; services write through their writer.
        """
        old = self._snapshot
        new = dataclasses.replace(fn(old), seq=old.seq + 1)
        self._snapshot = new
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in list(self._listeners):
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

    async def changes(self) -> AsyncIterator[Snapshot]:
        """The current snapshot, then each newer one (changes in between may be skipped)."""
        snapshot = self._snapshot
        yield snapshot
        while True:
            snapshot = await self.wait_for_change(snapshot.seq)
            yield snapshot

    def _write(self, section: str, value: Any, event: str) -> bool:
        old_value = getattr(self._snapshot, section)
        if value == old_value:
            return False
        self.replace(**{section: value})
        old_state = getattr(old_value, "state", None)
        new_state = getattr(value, "state", None)
        if new_state is not None and new_state != old_state:
            self._events.publish(
                event,
                state=str(new_state),
                reason=getattr(value, "reason", None),
            )
        return True


class SectionWriter(Generic[T]):
    """Writes one section of the snapshot (see `StateStore.writer`)."""

    def __init__(self, store: StateStore, section: str, event: str) -> None:
        self._store = store
        self.section = section
        self._event = event

    @property
    def current(self) -> T:
        value: T = getattr(self._store.current, self.section)
        return value

    def put(self, value: T) -> bool:
        """Make `value` the section; False (and nothing published) when it is unchanged.

        A section with an `updated_at` field is stamped with the clock when it changes.
        """
        old = self.current
        if value == old:
            return False
        if dataclasses.is_dataclass(value) and hasattr(value, "updated_at"):
            unstamped = dataclasses.replace(value, updated_at=getattr(old, "updated_at", None))  # type: ignore[type-var]
            if unstamped == old:
                return False
            value = dataclasses.replace(value, updated_at=self._store._clock.now())  # type: ignore[type-var]
        return self._store._write(self.section, value, self._event)

    def set(self, **changes: Any) -> bool:
        """`put` the section with these fields replaced."""
        return self.put(dataclasses.replace(self.current, **changes))  # type: ignore[type-var]
