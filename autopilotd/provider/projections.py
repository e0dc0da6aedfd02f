"""Keeping the board and the earnings projection current, off the job flow's path.

A job transition or a publish only marks the board stale; one task refreshes it (several
marks in a row cost one refresh). Earnings change only with a credit: the settlement asks
for both at once, so the scoreboard shows a credit before the buyer is told `success`.
"""

from __future__ import annotations

import asyncio

from autopilotd.provider.board import JobBoard
from autopilotd.provider.earnings import EarningsProjection
from autopilotd.store.jobs import Job


class Projections:
    def __init__(self, board: JobBoard, earnings: EarningsProjection) -> None:
        self._board = board
        self._earnings = earnings
        self._stale = asyncio.Event()

    def mark(self) -> None:
        self._stale.set()

    async def job_changed(self, job: Job) -> None:
        """A `JobObserver` of the flow."""
        self.mark()

    async def published(self) -> None:
        self.mark()

    async def refresh(self) -> None:
        """Both, now."""
        self._stale.clear()
        await self._board.refresh()
        await self._earnings.refresh()

    async def run(self) -> None:
        while True:
            await self._stale.wait()
            self._stale.clear()
            await self._board.refresh()
