"""Buying compute in race mode (ARCHITECTURE §5, step 8).

A request is published with a bid. The first provider that sent both a non-error result and a
payment-required invoice within the budget (decoded from the BOLT11 itself, never trusted from
the event) is paid through our own wallet (the `Payer` port), with all of its guarantees. The
request is done only when the result is in, our wallet reports the payment settled, and that
provider's `success` arrived. Results from other providers get a kind 7000 `lost-race`.

Time is timers, not polling: at a request's deadline an open request expires, and a finished
one stops being followed (until then a slower provider's result still gets its lost-race); a
failed payment is retried by a timer until the deadline (the payee may be restarting; the
wallet pays an invoice at most once, so a retry can never pay twice). Owns the snapshot's
`buyer` section.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from autopilotd.errors import NotFound, UserError
from autopilotd.nostr.events import EventCaps
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90 import (
    KIND_FEEDBACK,
    SERVED_KINDS,
    FeedbackStatus,
    JobInput,
    result_kind,
)
from autopilotd.nostr.nip90_buyer import (
    JobFeedback,
    JobResult,
    build_job_request,
    build_lost_race,
    parse_response,
)
from autopilotd.ports.payments import Payer
from autopilotd.ports.relays import RelayPoolPort, SubscriptionFilter
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import BuyerSection
from autopilotd.runtime.state import SectionWriter
from autopilotd.runtime.timers import Timers
from autopilotd.store.buys import BuyRequest, BuyRequests
from autopilotd.vocab import BuyStatus, PaymentStatus

logger = logging.getLogger(__name__)

PAY_RETRY_S = 5.0
CATCH_UP_S = 600
KINDS = tuple(sorted(SERVED_KINDS))


@dataclass
class _Race:
    """What each provider has sent for one followed request (memory; the row is the record)."""

    results: dict[str, JobResult] = field(default_factory=dict)
    invoices: dict[str, JobFeedback] = field(default_factory=dict)
    successes: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    lost_race_sent: set[str] = field(default_factory=set)
    retry_due: bool = True


class Buyer:
    name = "buyer"

    def __init__(
        self,
        *,
        pool: RelayPoolPort,
        payer: Payer,
        identity: NostrIdentity,
        requests: BuyRequests,
        writer: SectionWriter[BuyerSection],
        events: EventBus,
        clock: Clock,
    ) -> None:
        self._pool = pool
        self._sub = pool.subscription("buyer")
        self._payer = payer
        self._identity = identity
        self.requests = requests
        self._writer = writer
        self._events = events
        self._clock = clock
        self._timers = Timers(clock)
        self._races: dict[str, _Race] = {}
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()

    # -- reading -----------------------------------------------------------------------------

    async def get(self, request_id: str) -> BuyRequest:
        row = await self.requests.get(request_id)
        if row is None:
            raise NotFound(f"no request {request_id} of ours")
        return row

    async def wait(self, request_id: str, timeout: float) -> BuyRequest:
        """The request once it is done, failed or expired, or as it is after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while not (row := await self.get(request_id)).finished:
                    await self._changed.wait()
        except TimeoutError:
            row = await self.get(request_id)
        return row

    async def _update(self, request_id: str, **fields: object) -> BuyRequest:
        row = await self.requests.update(request_id, **fields)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        await self._publish_section()
        return row

    async def _publish_section(self) -> None:
        counts = await self.requests.counts()
        last = counts.last
        self._writer.put(
            BuyerSection(
                open_requests=counts.open,
                paid_requests=counts.paid,
                last_request=None
                if last is None
                else {
                    "request_id": last.request_id,
                    "status": last.status.value,
                    "provider": last.provider,
                },
            )
        )

    # -- buying ------------------------------------------------------------------------------

    async def submit(
        self,
        kind: int,
        prompt: str,
        budget_sats: int,
        providers: list[str],
        timeout_s: float,
        max_tokens: int | None,
        *,
        inputs: Sequence[JobInput] = (),
        params: Mapping[str, str | int | float] | None = None,
    ) -> BuyRequest:
        """Publish a request. `prompt` is its text input and what the request is shown as;
        `inputs` replace it as the request's inputs where a kind carries others (a sandbox
        job's files), and `params` become `param` tags."""
        if not self._pool.relays():
            raise UserError("buying needs relays: add one in Relay Connections (relays.add)")
        if kind not in KINDS:
            raise UserError(f"kind must be one of {', '.join(map(str, KINDS))}")
        if not prompt.strip() or len(prompt) > 16_000:
            raise UserError("the prompt must be 1 to 16,000 characters")
        self._payer.check_ready()
        tags: dict[str, str | int | float] = dict(params or {})
        if max_tokens is not None:
            tags["max_tokens"] = max_tokens
        event = build_job_request(
            self._identity,
            kind,
            list(inputs) or prompt,
            bid_msat=budget_sats * 1000,
            params=tags,
            providers=providers,
        )
        if len(event.json.encode()) > EventCaps().max_event_bytes:
            raise UserError(
                f"the request is larger than a provider accepts ({EventCaps().max_event_bytes} "
                "bytes): send smaller files"
            )
        rid = event.id
        now = self._clock.now()
        await self.requests.add(
            request_id=rid,
            kind=kind,
            prompt=prompt,
            budget_msat=budget_sats * 1000,
            now=now,
            deadline=now + timeout_s,
        )
        self._follow(rid, now + timeout_s)
        await self._resubscribe()
        sent_at = self._clock.now()
        report = await self._pool.publish(event)
        self._events.publish(
            "buyer.request_published",
            request_id=rid,
            kind=kind,
            budget_sats=budget_sats,
            sent_at=sent_at,
            relays_accepted=len(report.accepted),
        )
        if not report.any_accepted:
            return await self._update(
                rid, status=BuyStatus.FAILED, reason="no relay accepted the request"
            )
        await self._publish_section()
        return await self.get(rid)

    def _follow(self, rid: str, deadline: float) -> None:
        self._races.setdefault(rid, _Race())
        self._timers.at(f"deadline {rid}", deadline, lambda: self._deadline(rid))

    async def _deadline(self, rid: str) -> None:
        row = await self.get(rid)
        if row.status is BuyStatus.OPEN:
            race = self._races.get(rid)
            refused = race is not None and "invoice above budget" in race.errors.values()
            reason = "no provider delivered in time" + (
                " (an invoice above the budget was refused)" if refused else ""
            )
            await self._update(rid, status=BuyStatus.EXPIRED, reason=reason)
        if row.status is BuyStatus.PAYING:  # a payment in flight keeps its request followed
            self._follow(rid, self._clock.now() + PAY_RETRY_S)
            return
        self._races.pop(rid, None)
        await self._resubscribe()

    async def _resubscribe(self) -> None:
        ids = tuple(self._races)
        if not ids:
            await self._sub.set_filters([])
            return
        kinds = (KIND_FEEDBACK, *(result_kind(k) for k in KINDS))
        since = int(self._clock.now()) - CATCH_UP_S
        await self._sub.set_filters([SubscriptionFilter(kinds=kinds, e=ids, since=since)])

    async def listen(self) -> None:
        async for incoming in self._sub.events():
            rid = next(
                (t[1] for t in incoming.event.all("e") if len(t) > 1 and t[1] in self._races),
                None,
            )
            if rid is None:
                continue
            answer = parse_response(incoming.event, request_id=rid, buyer=self._identity)
            race = self._races[rid]
            if isinstance(answer, JobResult):
                race.results.setdefault(answer.provider, answer)
                self._events.publish(
                    "buyer.result_received", request_id=rid, provider=answer.provider
                )
            elif isinstance(answer, JobFeedback):
                if answer.status == FeedbackStatus.PAYMENT_REQUIRED and answer.bolt11:
                    race.invoices.setdefault(answer.provider, answer)
                    self._events.publish(
                        "buyer.invoice_received", request_id=rid, provider=answer.provider
                    )
                elif answer.status == FeedbackStatus.SUCCESS:
                    race.successes.add(answer.provider)
                elif answer.status == FeedbackStatus.ERROR:
                    race.errors[answer.provider] = answer.extra or "error"
            else:
                continue
            self._wake.set()

    async def decide(self) -> None:
        """Move each followed request forward when what arrived allows it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for rid in list(self._races):
                await self._step(rid)

    async def _step(self, rid: str) -> None:
        race = self._races.get(rid)
        if race is None:
            return
        row = await self.get(rid)
        if row.status in (BuyStatus.OPEN, BuyStatus.PAYING) and race.retry_due:
            chosen = row.provider if row.status is BuyStatus.PAYING else self._winner(row, race)
            if chosen is not None and chosen in race.invoices:
                row = await self._pay(row, race, chosen)
        if row.status is BuyStatus.PAID and row.provider in race.successes:
            row = await self._update(rid, status=BuyStatus.DONE)
        await self._lost_races(row, race)

    def _winner(self, row: BuyRequest, race: _Race) -> str | None:
        for provider in race.results:
            invoice = race.invoices.get(provider)
            if invoice is None or provider in race.errors or not invoice.bolt11:
                continue
            try:
                decoded = self._payer.decode_invoice(invoice.bolt11)
            except UserError:
                self._refuse(row, race, provider, "invalid invoice", None)
                continue
            if decoded.amount_msat is None or decoded.amount_msat > row.budget_msat:
                self._refuse(row, race, provider, "invoice above budget", decoded.amount_msat)
                continue
            return provider
        return None

    def _refuse(
        self, row: BuyRequest, race: _Race, provider: str, why: str, amount_msat: int | None
    ) -> None:
        """A provider's invoice is never paid: said once, in the activity feed too."""
        race.errors[provider] = why
        self._events.publish(
            "buyer.invoice_refused",
            request_id=row.request_id,
            provider=provider,
            reason=why,
            amount_msat=amount_msat,
            budget_msat=row.budget_msat,
        )

    async def _pay(self, row: BuyRequest, race: _Race, provider: str) -> BuyRequest:
        rid = row.request_id
        invoice, result = race.invoices[provider], race.results[provider]
        assert invoice.bolt11 is not None
        if row.status is BuyStatus.OPEN:
            decoded = self._payer.decode_invoice(invoice.bolt11)
            await self._update(
                rid,
                status=BuyStatus.PAYING,
                provider=provider,
                result=result.content,
                payment_hash=decoded.payment_hash,
            )
            self._events.publish("buyer.payment_sent", request_id=rid, provider=provider)
        try:
            outcome = await self._payer.pay_invoice(invoice.bolt11, description=f"nip90 {rid[:16]}")
        except UserError as exc:
            return await self._payment_failed(row, race, f"payment failed: {exc.message}")
        if outcome.status is PaymentStatus.SUCCEEDED:
            self._events.publish(
                "buyer.payment_settled",
                request_id=rid,
                provider=provider,
                payment_hash=outcome.payment_hash,
            )
            return await self._update(rid, status=BuyStatus.PAID)
        if outcome.status is PaymentStatus.FAILED:
            return await self._payment_failed(row, race, f"payment failed: {outcome.failure}")
        # Still in flight: the row says paying; ask the wallet again later (it never pays twice).
        race.retry_due = False
        self._timers.at(f"retry {rid}", self._clock.now() + PAY_RETRY_S, lambda: self._retry(race))
        return await self.get(rid)

    async def _payment_failed(self, row: BuyRequest, race: _Race, reason: str) -> BuyRequest:
        """Retry the same invoice until the deadline: the payee may be restarting."""
        rid = row.request_id
        retry_at = self._clock.now() + PAY_RETRY_S
        if retry_at >= row.deadline_at:
            return await self._update(rid, status=BuyStatus.FAILED, reason=reason)
        race.retry_due = False
        self._timers.at(f"retry {rid}", retry_at, lambda: self._retry(race))
        return await self._update(rid, status=BuyStatus.OPEN, reason=f"{reason}; retrying")

    async def _retry(self, race: _Race) -> None:
        race.retry_due = True
        self._wake.set()

    async def _lost_races(self, row: BuyRequest, race: _Race) -> None:
        winner = row.provider
        if winner is None:
            return
        for provider, result in race.results.items():
            if provider != winner and provider not in race.lost_race_sent:
                race.lost_race_sent.add(provider)
                await self._pool.publish(
                    build_lost_race(
                        self._identity,
                        request_id=row.request_id,
                        provider=provider,
                        result_id=result.id,
                    )
                )

    async def run(self, ready: Callable[[], None]) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._timers.run())
            for row in await self.requests.followed(self._clock.now()):
                self._follow(row.request_id, row.deadline_at)
            await self._resubscribe()
            await self._publish_section()
            ready()
            tg.create_task(self.listen())
            tg.create_task(self.decide())
