"""Public stats (`GET /stats`, `/api/stats`): cached, at most `MAX_AGE_S` old.

Counts only: live sessions, offers dispatched/started/completed/released/expired (and payment
attempts that failed) in the last 24 h, sats paid, the budget, and the treasury's state
(`degraded` when its spendable funds are below the reserve cap) with a fixed reason, never the
wallet's own text. No payment ids, node ids or pubkeys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autopilotd.nexus.desk import DAY_S, StarterDesk
from autopilotd.nexus.repos import Receipts, Sessions
from autopilotd.runtime.clock import Clock

MAX_AGE_S = 60.0

Treasury = Callable[[], dict[str, Any]]
"""The treasury's state for the public: {"state": …, "reason": …} (fixed words only)."""


class PublicStats:
    def __init__(
        self,
        *,
        sessions: Sessions,
        receipts: Receipts,
        desk: StarterDesk,
        treasury: Treasury,
        clock: Clock,
    ) -> None:
        self._sessions = sessions
        self._receipts = receipts
        self._desk = desk
        self._treasury = treasury
        self._clock = clock
        self._cached: dict[str, Any] | None = None

    async def get(self) -> dict[str, Any]:
        now = self._clock.now()
        if self._cached is None or now - self._cached["as_of"] > MAX_AGE_S:
            self._cached = await self._compute(now)
        return self._cached

    async def _compute(self, now: float) -> dict[str, Any]:
        counts = await self._receipts.counts(now - DAY_S)
        budget = await self._desk.budget()
        return {
            "service": "autopilotd nexus",
            "as_of": now,
            "sessions_active": await self._sessions.count_live(now),
            "starter_offers_24h": {
                "dispatched": counts.get("offer.dispatched", 0),
                "started": counts.get("offer.started", 0),
                "completed": counts.get("offer.paid", 0),
                "released": counts.get("offer.released", 0),
                "expired": counts.get("offer.expired", 0),
                "payment_failures": counts.get("offer.payment_failed", 0),
            },
            "starter_demand_ineligible_polls_24h": counts.get("poll.ineligible", 0),
            "starter_demand_paid_sats_24h": budget["paid_24h_sats"],
            "budget": budget,
            "treasury": self._treasury(),
        }
