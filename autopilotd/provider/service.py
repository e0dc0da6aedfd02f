"""The provider service: wiring only. Each part is its own module:

    presence.py    Go Online / Offline, the provider section, the NIP-89 handler
    intake.py      the provider's subscription, validation, admission (or preview, or busy)
    dispatch.py    the queue and `max_inflight`
    flow.py        the job state machine, one method per stage, deadlines as timers
    outbox.py      signed-once events, published and re-published on relay (re)connect
    settlement.py  the wallet's settled payments → credited earnings (one unit of work)
    board.py       the jobs section;  earnings.py  the earnings section
    projections.py keeps both current after each transition, off the flow's path

It gets its ports (the relay pool, the wallet as `Payments`, the kinds of work it sells, the
policies of job sources beyond the open network) and the kernel's parts in its constructor,
and owns three snapshot sections: provider, jobs and earnings, each through its own writer.
A job source (ports/jobs.py) claims its requests at intake, follows every job as an observer,
and may end its own jobs through the flow's `abort`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.intake import IntakePolicy, RequestValidator
from autopilotd.ports.jobs import SourcePolicy, Work
from autopilotd.ports.payments import Payments
from autopilotd.ports.relays import RelayPoolPort
from autopilotd.provider.board import JobBoard
from autopilotd.provider.dispatch import Dispatch
from autopilotd.provider.earnings import EarningsProjection
from autopilotd.provider.flow import JobFlow
from autopilotd.provider.intake import Intake
from autopilotd.provider.outbox import JobOutbox
from autopilotd.provider.presence import Presence
from autopilotd.provider.projections import Projections
from autopilotd.provider.settlement import Settlement
from autopilotd.provider.work import Works
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.state import StateStore
from autopilotd.runtime.timers import Timers
from autopilotd.store.db import Store
from autopilotd.store.earnings import Earnings
from autopilotd.store.jobs import Jobs
from autopilotd.store.outbox import Outbox

MAX_TOKENS_CAP = 1_000_000
"""The largest max_tokens a request may name at all (the job's own cap is a setting)."""


class ProviderService:
    name = "provider"

    def __init__(
        self,
        *,
        pool: RelayPoolPort,
        payments: Payments,
        works: Sequence[Work],
        identity: NostrIdentity,
        store: Store,
        state: StateStore,
        config: LiveConfig,
        events: EventBus,
        clock: Clock,
        sources: Sequence[SourcePolicy] = (),
    ) -> None:
        cfg = config.current
        self.works = Works(works)
        self.jobs = Jobs(store)
        outbox = Outbox(store)
        self.timers = Timers(clock)
        validator = RequestValidator(
            identity,
            IntakePolicy(
                min_bid_msat=cfg.provider_price_sats * 1000,
                max_tokens_cap=MAX_TOKENS_CAP,
                buyer_refill_per_s=cfg.provider_buyer_rate_per_min / 60,
                buyer_burst=max(5, cfg.provider_buyer_rate_per_min // 12),  # 5 s of it
            ),
            clock=clock.now,
        )
        self.presence = Presence(
            pool=pool,
            identity=identity,
            state=state,
            writer=state.writer("provider", event="provider.mode_changed"),
            config=config,
            clock=clock,
            timers=self.timers,
            served=self.works.served,
        )
        self.outbox = JobOutbox(outbox, pool, clock)
        self.flow = JobFlow(
            jobs=self.jobs,
            outbox=self.outbox,
            payments=payments,
            works=self.works,
            identity=identity,
            parser=validator.parser,
            state=state,
            config=config,
            events=events,
            clock=clock,
            timers=self.timers,
        )
        self.dispatch = Dispatch(
            self.flow.work, lambda: config.current.provider_max_inflight, cfg.provider_queue_size
        )
        self.board = JobBoard(
            jobs=self.jobs,
            outbox=outbox,
            parser=validator.parser,
            writer=state.writer("jobs"),
            queue_depth=self.dispatch.depth,
        )
        self.earnings = EarningsProjection(
            earnings=Earnings(store),
            writer=state.writer("earnings"),
            events=events,
            clock=clock,
        )
        self._projections = Projections(self.board, self.earnings)
        self.settlement = Settlement(
            store=store,
            jobs=self.jobs,
            payments=payments,
            flow=self.flow,
            credited=self._projections.refresh,
            events=events,
            clock=clock,
        )
        self.intake = Intake(
            subscription=pool.subscription("provider"),
            validator=validator,
            identity=identity,
            presence=self.presence,
            board=self.board,
            dispatch=self.dispatch,
            flow=self.flow,
            jobs=self.jobs,
            works=self.works,
            config=config,
            events=events,
            clock=clock,
            sources=sources,
        )
        self._config = config
        self.flow.observers.append(self._projections)
        for source in sources:
            self.flow.observers.append(source)
            source.attach(self.flow)
        self.outbox.published = self._projections.published
        self.dispatch.changed = self.board.queue_changed

    async def _config_changed(self, old: object, new: object) -> None:
        await self.dispatch.capacity_changed()

    async def run(self, ready: Callable[[], None]) -> None:
        unsubscribe = self._config.on_change(self._config_changed)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.timers.run())
                tg.create_task(self.dispatch.run())
                await self._projections.refresh()
                tg.create_task(self._projections.run())
                tg.create_task(self.settlement.run())
                for request_id in await self.flow.resume():
                    await self.dispatch.put(request_id)
                await self.intake.subscribe()
                tg.create_task(self.outbox.run())
                tg.create_task(self.presence.run())
                tg.create_task(self.intake.run())
                ready()
        finally:
            unsubscribe()
