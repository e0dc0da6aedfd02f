"""Settlement: a job is paid only when the wallet itself reports its invoice settled.

The wallet's stream of settled inbound payments wakes `settle(payment_hash)`, which runs one
unit of work over three repositories in one transaction: the wallet ledger's settled inbound
row for that hash, the job bound to it, and the earnings credit. The credit happens once per
hash (M5), never for an underpayment (M8), and never without the wallet's own record (M7);
the job becomes `paid` in the same transaction. Then the buyer is told `success` with the
amount. After a restart every delivered job is checked the same way before the stream is
read, so a payment that settled while the daemon was down is credited too (M6).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from autopilotd.crashpoints import crash_point
from autopilotd.ports.payments import Payments
from autopilotd.provider.flow import JobFlow
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.events import EventBus
from autopilotd.store.db import Store
from autopilotd.store.earnings import Earnings
from autopilotd.store.jobs import Job, Jobs
from autopilotd.store.ledger import Ledger
from autopilotd.vocab import JobStage

logger = logging.getLogger(__name__)


async def credit_job(store: Store, payment_hash: str, now: float) -> tuple[Job | None, bool]:
    """The settlement unit of work; returns (the job bound to the hash, newly credited)."""
    async with store.transaction() as tx:
        jobs = Jobs(tx)
        job = await jobs.by_payment_hash(payment_hash)
        paid = await Ledger(tx).settled_in(payment_hash)
        if job is None or paid is None:
            return job, False
        # M8: an underpayment never counts as paid. Over a just-in-time channel the LSP takes
        # its opening fee on the way, up to the fee quoted when the invoice was made.
        invoice = await Ledger(tx).invoice(payment_hash)
        lsp_fee = min(paid.fee_msat or 0, invoice["lsp_fee_msat"] if invoice else 0)
        if paid.amount_msat + lsp_fee < job.price_msat:
            return job, False
        new = await Earnings(tx).credit(payment_hash, job.request_id, paid.amount_msat, now)
        if job.stage in (JobStage.DELIVERED, JobStage.DELIVERED_UNPAID):
            job = await jobs.mark_paid(job.request_id, now)
    return job, new


class Settlement:
    def __init__(
        self,
        *,
        store: Store,
        jobs: Jobs,
        payments: Payments,
        flow: JobFlow,
        credited: Callable[[], Awaitable[None]],
        events: EventBus,
        clock: Clock,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._payments = payments
        self._flow = flow
        self._credited = credited
        self._events = events
        self._clock = clock

    async def settle(self, payment_hash: str) -> None:
        crash_point("job.after_settlement_before_credit")
        job, credited = await credit_job(self._store, payment_hash, self._clock.now())
        if job is None or not credited:
            return
        self._events.publish(
            "provider.settlement_confirmed",
            request_id=job.request_id,
            payment_hash=payment_hash,
            amount_sats=job.price_msat // 1000,
        )
        await self._flow.notify(job)
        await self._credited()  # the scoreboard shows it first, then the buyer is told
        await self._flow.announce_success(job)

    async def run(self) -> None:
        settlements = self._payments.settlements()  # registered now: nothing is missed below
        for job in await self._jobs.open_jobs():
            if job.stage is JobStage.DELIVERED and job.payment_hash:
                await self.settle(job.payment_hash)
        for job in await self._jobs.paid_without_success():
            await self._flow.announce_success(job)
        async for paid in settlements:
            await self.settle(paid.payment_hash)
