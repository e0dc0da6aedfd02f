"""Presence: the provider's Go Online switch, its state, and its NIP-89 handler.

Owns the snapshot's `provider` section. The state follows from the user's choice and what
blocks earning (the snapshot's derived blockers: identity, wallet, model, relays):
`offline` until the user goes online; then `connecting` while something blocks, `online`
when nothing does, and `degraded` when something breaks after it was online. It is
recomputed on every snapshot change and written only when it changes. After a restart the
provider is offline: going online never happens by itself.

Online, the NIP-89 handler (kind 31990, one `k` tag per served kind, the price) is published
when the provider comes online, again when the price changes, when a relay (re)connects (it
may have missed it: a Nexus looks for it on its own relay), and every `HANDLER_REFRESH_S` by a
timer; going offline deletes it (NIP-09).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from autopilotd.config import Config
from autopilotd.errors import UserError
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90 import build_handler, build_handler_deletion
from autopilotd.ports.relays import RelayHealth, RelayPoolPort
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.sections import ProviderSection, ProviderState
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import SectionWriter, StateStore
from autopilotd.runtime.timers import Timers

logger = logging.getLogger(__name__)

HANDLER_D_TAG = "autopilotd"
HANDLER_REFRESH_S = 600.0


class Presence:
    def __init__(
        self,
        *,
        pool: RelayPoolPort,
        identity: NostrIdentity,
        state: StateStore,
        writer: SectionWriter[ProviderSection],
        config: LiveConfig,
        clock: Clock,
        timers: Timers,
        served: Callable[[], tuple[int, ...]],
    ) -> None:
        self._pool = pool
        self._served = served
        self._identity = identity
        self._state = state
        self._writer = writer
        self._config = config
        self._clock = clock
        self._timers = timers
        self.want_online = False
        self._handler_ids: list[str] = []
        self._connects: dict[str, int] = {r.url: r.connects for r in pool.health()}
        self._reconnected = asyncio.Event()

    def accepting(self) -> bool:
        return self._writer.current.state is ProviderState.ONLINE

    async def go_online(self) -> dict[str, Any]:
        blockers = self._state.current.facts.earn_blockers
        if blockers:
            self._refresh(self._state.current)
            raise UserError(
                "cannot go online: " + "; ".join(f"{b.reason} ({b.next_step})" for b in blockers),
                data={"blockers": [dataclasses.asdict(b) for b in blockers]},
            )
        self.want_online = True
        if self._refresh(self._state.current):
            await self._announce()
        return {"state": self._writer.current.state.value}

    async def go_offline(self) -> dict[str, Any]:
        was = self.want_online
        self.want_online = False
        self._refresh(self._state.current)
        self._timers.cancel("handler refresh")
        if was and self._handler_ids:
            deletion = build_handler_deletion(
                self._identity, d_tag=HANDLER_D_TAG, handler_event_ids=self._handler_ids
            )
            await self._pool.publish(deletion)
            self._handler_ids.clear()
            self._writer.set(announced_at=None)  # no handler stands now
        return {
            "state": self._writer.current.state.value,
            "active_jobs": len(self._state.current.jobs.active),
        }

    def _refresh(self, snapshot: Snapshot) -> bool:
        """Recompute the state from the snapshot; True when the provider just came online."""
        blockers = snapshot.facts.earn_blockers
        section = self._writer.current
        if not self.want_online:
            state = ProviderState.OFFLINE
            reason = "offline: requests are shown as previews only"
        elif blockers:
            state = ProviderState.DEGRADED if section.online_since else ProviderState.CONNECTING
            reason = "not earning: " + "; ".join(b.reason for b in blockers)
        else:
            state = ProviderState.ONLINE
            reason = "online: accepting jobs"
        online_since = section.online_since if self.want_online else None
        if state is ProviderState.ONLINE and online_since is None:
            online_since = self._clock.now()
        self._writer.set(state=state, reason=reason, blockers=blockers, online_since=online_since)
        return state is ProviderState.ONLINE and section.state is not ProviderState.ONLINE

    async def _announce(self) -> None:
        """Publish (or refresh) the NIP-89 handler for the served kinds, and set its timer."""
        event = build_handler(
            self._identity,
            self._writer.current.served_kinds,
            d_tag=HANDLER_D_TAG,
            metadata={
                "name": "autopilotd",
                "about": "local compute, paid over Lightning",
                "price_sats": self._config.current.provider_price_sats,
            },
        )
        report = await self._pool.publish(event)
        if report.any_accepted:
            self._handler_ids = [event.id]
            self._writer.set(announced_at=self._clock.now())
        self._timers.at(
            "handler refresh", self._clock.now() + HANDLER_REFRESH_S, self._refresh_handler
        )

    async def _refresh_handler(self) -> None:
        if self.accepting():
            await self._announce()

    async def _config_changed(self, old: Config, new: Config) -> None:
        if new.provider_max_inflight != old.provider_max_inflight:
            self._writer.set(max_inflight=new.provider_max_inflight)
        if new.provider_price_sats != old.provider_price_sats:
            self._writer.set(price_sats=new.provider_price_sats)
            if self.accepting():
                await self._announce()  # the handler's metadata names the price

    def _on_health(self, row: RelayHealth) -> None:
        before = self._connects.get(row.url, 0)
        self._connects[row.url] = row.connects
        if row.connected and row.connects > before:
            self._reconnected.set()

    async def _announce_on_reconnect(self) -> None:
        while True:
            await self._reconnected.wait()
            self._reconnected.clear()
            if self.accepting():
                await self._announce()

    async def run(self) -> None:
        cfg = self._config.current
        self._writer.set(
            served_kinds=self._served(),
            price_sats=cfg.provider_price_sats,
            max_inflight=cfg.provider_max_inflight,
        )
        unsubscribe = [
            self._config.on_change(self._config_changed),
            self._pool.on_health(self._on_health),
        ]
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._announce_on_reconnect())
                async for snapshot in self._state.changes():
                    served = self._served()  # a kind's work became possible, or stopped
                    moved = self._writer.set(served_kinds=served)
                    if self._refresh(snapshot) or (moved and self.accepting()):
                        await self._announce()
        finally:
            for undo in unsubscribe:
                undo()
