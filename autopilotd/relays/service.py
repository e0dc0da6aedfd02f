"""The relays service: runs the daemon's one relay pool and owns the snapshot's `relays` rows.

The provider and the buyer each read and publish through the same pool (their own
subscriptions); this service runs it under the runtime's TaskGroup, shows one row per relay
(state, last error, counters), and follows the `relays` and `nexus_url` settings: relays
added or removed in Settings (a Nexus brings its own) join or leave the pool at once.

A row's `last_seen` moves on every message a relay sends; it is shown at most every
`SEEN_EVERY_S`, so a busy relay does not republish the snapshot on each event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from autopilotd.config import Config
from autopilotd.ports.relays import RelayHealth, RelayPoolPort
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.sections import RelayRow
from autopilotd.runtime.state import SectionWriter

SEEN_EVERY_S = 5.0


def relay_row(health: RelayHealth) -> RelayRow:
    shown = {f.name: getattr(health, f.name) for f in dataclasses.fields(RelayRow)}
    return RelayRow(**{**shown, "state": health.state.value})


class RelaysService:
    name = "relays"

    def __init__(
        self,
        pool: RelayPoolPort,
        writer: SectionWriter[tuple[RelayRow, ...]],
        config: LiveConfig,
    ) -> None:
        self._pool = pool
        self._writer = writer
        self._config = config
        self._rows: dict[str, RelayRow] = {}
        for health in pool.health():
            self._rows[health.url] = relay_row(health)
        self._publish()

    def _publish(self) -> None:
        self._writer.put(tuple(self._rows[url] for url in sorted(self._rows)))

    def on_health(self, health: RelayHealth) -> None:
        new = relay_row(health)
        old = self._rows.get(health.url)
        only_seen = old is not None and dataclasses.replace(old, last_seen=new.last_seen) == new
        if only_seen and (new.last_seen or 0) - (old.last_seen or 0 if old else 0) < SEEN_EVERY_S:
            return  # only last_seen moved, and only a little
        self._rows[health.url] = new
        self._publish()

    def on_removed(self, url: str) -> None:
        if self._rows.pop(url, None) is not None:
            self._publish()

    async def _config_changed(self, old: Config, new: Config) -> None:
        if new.relay_urls() != old.relay_urls():
            await self._pool.set_relays(new.relay_urls())

    async def run(self, ready: Callable[[], None]) -> None:
        unsubscribe = [
            self._pool.on_health(self.on_health),
            self._pool.on_removed(self.on_removed),
            self._config.on_change(self._config_changed),
        ]
        try:
            await self._pool.run(ready)
        finally:
            for undo in unsubscribe:
                undo()
