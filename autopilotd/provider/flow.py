"""The job flow: one method per stage of `JobStage`, each recording before it acts.

    received → accepted → running → delivered → paid (settlement.py)
                                  ↘ failed     ↘ delivered_unpaid

- received: record `accepted`.
- accepted: publish kind 7000 `processing` (signed once, kept in the outbox), record `running`.
- running: do the job (its kind's `Work`: the local model, the sandbox; or reuse the result
  already kept), publish the result; once a relay accepted it, ask the wallet for an invoice
  and record `delivered` with its payment hash and the payment deadline.
- delivered: publish kind 7000 `payment-required` with the invoice, and set a timer for the
  deadline: if the wallet has not seen the invoice paid by then, the job ends
  `delivered_unpaid`, visibly. A buyer who paid another provider (`lost-race`) ends it at once.

Every transition is recorded before the next action, so a crash resumes the job where it
stood (RELIABILITY M10). Where a job came from (the open network, a Nexus's starter demand)
and how it is priced is decided at admission; the flow is the same for every job. Observers
(`JobObserver`) hear of every transition: the board, the earnings projection and the
settlement follow jobs that way, and so does a job source (ports/jobs.py). A source may also
`abort` one of its jobs (its lease ended): a job still working fails at its next step, without
publishing a result; a delivered one ends `delivered_unpaid`; either way its buyer is told
kind 7000 `error` with the reason.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from autopilotd.crashpoints import crash_point
from autopilotd.errors import AutopilotError, Conflict
from autopilotd.nostr.events import SignedEvent
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.intake import RequestParser
from autopilotd.nostr.nip90 import (
    FeedbackStatus,
    JobRequest,
    build_feedback,
    build_result,
)
from autopilotd.nostr.reasons import Rejection
from autopilotd.ports.jobs import WorkFailed
from autopilotd.ports.payments import Payments
from autopilotd.provider.outbox import JobOutbox
from autopilotd.provider.work import Works
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.state import StateStore
from autopilotd.runtime.timers import Timers
from autopilotd.store.jobs import Job, Jobs
from autopilotd.vocab import WORKING_STAGES, JobStage, OutboxPurpose

logger = logging.getLogger(__name__)

PARTS_READY_TIMEOUT_S = 300.0
INVOICE_EXPIRY_MARGIN_S = 60
REQUEST_CACHE = 256


class JobObserver(Protocol):
    async def job_changed(self, job: Job) -> None:
        """`job` was just recorded at a new stage (it must not raise)."""
        ...


class JobFlow:
    def __init__(
        self,
        *,
        jobs: Jobs,
        outbox: JobOutbox,
        payments: Payments,
        works: Works,
        identity: NostrIdentity,
        parser: RequestParser,
        state: StateStore,
        config: LiveConfig,
        events: EventBus,
        clock: Clock,
        timers: Timers,
    ) -> None:
        self._jobs = jobs
        self._outbox = outbox
        self._payments = payments
        self._works = works
        self._identity = identity
        self._parser = parser
        self._state = state
        self._config = config
        self._events = events
        self._clock = clock
        self._timers = timers
        self.observers: list[JobObserver] = []
        self._requests: OrderedDict[str, JobRequest] = OrderedDict()
        self._lost: OrderedDict[str, str] = OrderedDict()  # request id → why it ends unpaid
        self._aborted: OrderedDict[str, str] = OrderedDict()  # request id → why it ends now
        self._stages: dict[JobStage, Callable[[Job], Awaitable[Job | None]]] = {
            JobStage.RECEIVED: self.on_received,
            JobStage.ACCEPTED: self.on_accepted,
            JobStage.RUNNING: self.on_running,
            JobStage.DELIVERED: self.on_delivered,
        }

    # -- running a job ----------------------------------------------------------------------

    async def work(self, request_id: str) -> None:
        """Run one accepted job as far as this machine can take it, whatever happens."""
        try:
            job = await self._jobs.get(request_id)
            work = self._works.get(job.kind) if job is not None else None
            needs = ("wallet", *(work.needs if work is not None else ()))
            if not await self._parts_ready(needs):
                await self._fail_open(request_id, f"the {' or the '.join(needs)} did not get ready")
                return
            while job is not None and job.stage in self._stages:
                if job.request_id in self._aborted:
                    await self._end_aborted(job)
                    break
                moved = await self._stages[job.stage](job)
                if moved is None or moved.stage == job.stage:
                    break
                job = moved
        except Exception:
            logger.exception("job %s failed unexpectedly", request_id)
            await self._fail_open(request_id, "internal error")

    async def on_received(self, job: Job) -> Job:
        job = await self._advance(job, JobStage.ACCEPTED)
        self._events.publish("provider.accepted", request_id=job.request_id, kind=job.kind)
        crash_point("job.after_accept")
        return job

    async def on_accepted(self, job: Job) -> Job:
        request = self.request(job)
        await self._outbox.send(
            job.request_id,
            OutboxPurpose.PROCESSING,
            lambda: build_feedback(self._identity, request, FeedbackStatus.PROCESSING),
        )
        job = await self._advance(job, JobStage.RUNNING)
        self._events.publish("provider.running", request_id=job.request_id)
        return job

    async def on_running(self, job: Job) -> Job | None:
        request = self.request(job)
        make: Callable[[], SignedEvent]
        if await self._outbox.stored(job.request_id, OutboxPurpose.RESULT) is None:
            work = self._works.get(job.kind)
            try:
                if work is None:
                    raise WorkFailed(f"kind {job.kind} is not served here")
                content = await work.execute(request)
            except WorkFailed as exc:
                await self.fail(job, exc.reason)
                return None
            if job.request_id in self._aborted:  # ended while it ran: no result goes out
                await self._end_aborted(job)
                return None
            make = lambda: build_result(  # noqa: E731 - signed once, inside send
                self._identity, request, content, amount_msat=job.price_msat
            )
        else:
            make = lambda: _never()  # noqa: E731 - the kept result is sent again
        if not await self._outbox.send(job.request_id, OutboxPurpose.RESULT, make):
            await self.fail(job, "no relay accepted the result")
            return None
        self._events.publish("provider.result_published", request_id=job.request_id)
        crash_point("job.after_result_published")
        timeout = self._config.current.provider_payment_timeout_s
        try:
            invoice = await self._payments.create_invoice(
                job.price_msat,
                f"autopilotd job {job.request_id[:16]}",
                int(timeout) + INVOICE_EXPIRY_MARGIN_S,
            )
        except AutopilotError as exc:
            await self.fail(job, f"no invoice: {exc.message}")
            return None
        return await self._advance(
            job,
            JobStage.DELIVERED,
            payment_hash=invoice.payment_hash,
            bolt11=invoice.bolt11,
            pay_deadline_at=self._clock.now() + timeout,
        )

    async def on_delivered(self, job: Job) -> Job | None:
        lost = self._lost.pop(job.request_id, None)
        if lost is not None:
            return await self.end_unpaid(job, lost, "lost-race")
        request = self.request(job)
        bolt11 = job.bolt11
        assert bolt11 is not None and job.payment_hash is not None
        await self._outbox.send(
            job.request_id,
            OutboxPurpose.PAYMENT_REQUIRED,
            lambda: build_feedback(
                self._identity,
                request,
                FeedbackStatus.PAYMENT_REQUIRED,
                amount_msat=job.price_msat,
                bolt11=bolt11,
            ),
        )
        self._events.publish(
            "provider.payment_requested", request_id=job.request_id, payment_hash=job.payment_hash
        )
        crash_point("job.after_invoice_published")
        self.watch_deadline(job)
        return None

    # -- endings ----------------------------------------------------------------------------

    async def fail(self, job: Job, reason: str) -> None:
        job = await self._advance(job, JobStage.FAILED, reason=reason)
        self._events.publish("provider.failed", request_id=job.request_id, reason=reason)
        request = self.request(job)
        await self._outbox.send(
            job.request_id,
            OutboxPurpose.ERROR,
            lambda: build_feedback(self._identity, request, FeedbackStatus.ERROR, extra=reason),
        )

    async def _fail_open(self, request_id: str, reason: str) -> None:
        job = await self._jobs.get(request_id)
        if job is not None and job.stage in WORKING_STAGES:
            await self._advance(job, JobStage.FAILED, reason=reason)

    async def end_unpaid(self, job: Job, reason: str, why: str) -> Job:
        job = await self._advance(job, JobStage.DELIVERED_UNPAID, reason=reason)
        if why == "lost-race":
            self._events.publish("provider.lost_race", request_id=job.request_id)
        self._events.publish("provider.delivered_unpaid", request_id=job.request_id, reason=why)
        return job

    async def abort(self, request_id: str, reason: str) -> None:
        """End a job for its source (ports/jobs.py `JobControl`); see the module docstring."""
        job = await self._jobs.get(request_id)
        if job is None:
            return
        if job.stage in WORKING_STAGES:
            self._aborted[request_id] = reason  # its worker ends it at the next step
            while len(self._aborted) > REQUEST_CACHE:
                self._aborted.popitem(last=False)
        elif job.stage is JobStage.DELIVERED:
            self._aborted[request_id] = reason
            await self._end_aborted(job)

    async def _end_aborted(self, job: Job) -> None:
        reason = self._aborted.pop(job.request_id, "ended by its source")
        if job.stage in WORKING_STAGES:
            await self.fail(job, reason)
            return
        if job.stage is not JobStage.DELIVERED:
            return
        self._timers.cancel(f"deadline {job.request_id}")
        job = await self.end_unpaid(job, reason, "aborted")
        request = self.request(job)
        await self._outbox.send(
            job.request_id,
            OutboxPurpose.ERROR,
            lambda: build_feedback(self._identity, request, FeedbackStatus.ERROR, extra=reason),
        )

    def watch_deadline(self, job: Job) -> None:
        """The job ends unpaid at its deadline unless the wallet saw it paid by then."""
        assert job.pay_deadline_at is not None
        rid = job.request_id
        self._timers.at(f"deadline {rid}", job.pay_deadline_at, lambda: self._deadline(rid))

    async def _deadline(self, request_id: str) -> None:
        job = await self._jobs.get(request_id)
        if job is not None and job.stage is JobStage.DELIVERED:
            reason = "not paid in time"
            if job.payment_hash and await self._payments.lsp_fee_msat(job.payment_hash):
                reason += (
                    ": its invoice needed a new channel from the LSP, and no payment came "
                    "over it (the buyer did not pay, or the LSP could not open the channel)"
                )
            await self.end_unpaid(job, reason, "deadline")

    async def lost_race(self, event: SignedEvent) -> None:
        """A buyer telling us another provider won its request: our job ends unpaid, visibly.

        Only the job's own buyer can say so (the pool checked the signature), and only once
        our result is out: a delivered job ends at once; one still between its result and its
        invoice (the buyer can be that quick) ends as soon as it is delivered.
        """
        status = event.first("status")
        if status is None or len(status) < 3 or status[1] != "error" or status[2] != "lost-race":
            return
        reason = "lost the race: the buyer paid another provider"
        for tag in event.all("e"):
            job = await self._jobs.get(tag[1]) if len(tag) > 1 else None
            if job is None or job.buyer_pubkey != event.pubkey:
                continue
            if job.stage is JobStage.DELIVERED:
                self._timers.cancel(f"deadline {job.request_id}")
                await self.end_unpaid(job, reason, "lost-race")
            elif job.stage is JobStage.RUNNING:
                self._lost[job.request_id] = reason
                while len(self._lost) > REQUEST_CACHE:
                    self._lost.popitem(last=False)

    # -- start-up ---------------------------------------------------------------------------

    async def resume(self) -> list[str]:
        """After a restart: the jobs that still need work (to queue, returned); delivered
        jobs get their invoice sent again (the same event) and their deadline set again."""
        queue: list[str] = []
        for job in await self._jobs.open_jobs():
            if job.stage in WORKING_STAGES:
                queue.append(job.request_id)
            elif job.stage is JobStage.DELIVERED:
                await self.on_delivered(job)
        return queue

    # -- helpers ----------------------------------------------------------------------------

    def request(self, job: Job) -> JobRequest:
        """The job's request, parsed again as of when it arrived (cached)."""
        request = self._requests.get(job.request_id)
        if request is None:
            parsed = self._parser.parse(job.request_json, now=job.received_at)
            if isinstance(parsed, Rejection):
                raise Conflict(f"stored request {job.request_id} no longer parses: {parsed.reason}")
            request = self._requests[job.request_id] = parsed
            while len(self._requests) > REQUEST_CACHE:
                self._requests.popitem(last=False)
        return request

    async def announce_success(self, job: Job) -> None:
        """Kind 7000 `success` with the amount the wallet saw paid (after the credit)."""
        try:
            request = self.request(job)
        except Conflict as exc:
            logger.warning("success feedback for %s: %s", job.request_id, exc.message)
            return
        await self._outbox.send(
            job.request_id,
            OutboxPurpose.SUCCESS,
            lambda: build_feedback(
                self._identity, request, FeedbackStatus.SUCCESS, amount_msat=job.price_msat
            ),
        )

    async def _advance(self, job: Job, stage: JobStage, **fields: object) -> Job:
        moved = await self._jobs.advance(job.request_id, stage, **fields)
        await self.notify(moved)
        return moved

    async def notify(self, job: Job) -> None:
        for observer in self.observers:
            try:
                await observer.job_changed(job)
            except Exception:
                logger.exception("an observer of job %s failed", job.request_id)

    async def _parts_ready(self, needs: tuple[str, ...]) -> bool:
        """Wait until the wallet and what the job's work needs are ready (after a restart,
        resumed jobs wait)."""
        snapshot = self._state.current
        deadline = self._clock.now() + PARTS_READY_TIMEOUT_S
        while any(snapshot.facts.blocker(need) for need in needs):
            left = deadline - self._clock.now()
            if left <= 0:
                return False
            snapshot = await self._state.wait_for_change(snapshot.seq, min(left, 5.0))
        return True


def _never() -> SignedEvent:
    raise AssertionError("the outbox already holds this event")
