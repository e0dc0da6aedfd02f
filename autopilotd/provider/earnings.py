"""The earnings projection: the snapshot's `earnings` section, from the credited earnings.

Counted only from wallet-confirmed payments bound to jobs (the earnings table, written by
the settlement unit of work). A milestone crossed by a credit is announced once, as the
domain event `earnings.milestone_reached`; it is celebrated in the UI until the user marks
it seen (`earnings.milestone_seen`).
"""

from __future__ import annotations

from autopilotd.errors import UserError
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import EarningsSection
from autopilotd.runtime.state import SectionWriter
from autopilotd.store.earnings import Earnings

DAY_S = 86400


class EarningsProjection:
    def __init__(
        self,
        *,
        earnings: Earnings,
        writer: SectionWriter[EarningsSection],
        events: EventBus,
        clock: Clock,
    ) -> None:
        self._earnings = earnings
        self._writer = writer
        self._events = events
        self._clock = clock
        self._reached: set[int] | None = None  # milestones reached, once read after start

    async def refresh(self) -> None:
        now = self._clock.now()
        summary = await self._earnings.summary(day_start=now - (now % DAY_S))
        self._writer.put(
            EarningsSection(
                sats_today=summary.sats_today,
                lifetime_sats=summary.lifetime_sats,
                jobs_today=summary.jobs_today,
                lifetime_jobs=summary.lifetime_jobs,
                last_payment=summary.last_payment,
                series=tuple((at, int(sats)) for at, sats in summary.series),
                milestones=tuple(summary.milestones),
            )
        )
        reached = {m["sats"] for m in summary.milestones if m["reached_at"]}
        for sats in sorted(reached - self._reached) if self._reached is not None else ():
            self._events.publish("earnings.milestone_reached", sats=sats)
        self._reached = reached

    async def mark_seen(self, sats: int) -> bool:
        """Mark a reached milestone as celebrated; True when this call changed it."""
        milestones = {m["sats"]: m for m in await self._earnings.milestones()}
        if sats not in milestones:
            raise UserError(
                f"no milestone of {sats} sats (they are {', '.join(map(str, milestones))})"
            )
        if milestones[sats]["reached_at"] is None:
            raise UserError(f"the {sats}-sat milestone is not reached yet")
        changed = await self._earnings.celebrate(sats)
        await self.refresh()
        return changed
