"""Intake: the provider's subscription on the relays, and what becomes of each request.

Requests of the served kinds (and kind 7000 feedback addressed to us) arrive through the
provider's own subscription of the daemon's relay pool (`since` with an overlap window; the
pool deduplicates across relays and reconnects). Each request goes through the validator
(nostr/intake.py: the pure parser, then this provider's policy and the signature); a refused
one is only counted, by reason. A valid one is, in this order:

- ours (we also buy): ignored, not even a preview;
- seen while offline: shown as a read-only preview, never accepted;
- beyond the queue: refused as `busy`;
- otherwise recorded as a job (once per request id) and queued for the job flow.

Each request is priced by its kind's work (ports/jobs.py `Work`): its bid must reach the
work's least price before the signature is checked, and the request's own price after it is
parsed (a sandbox job's price depends on the limits it asks); a kind this machine does not do
now is refused as `kind-not-served`, an unreadable job as `malformed`.

Before validation, each job source's policy (ports/jobs.py; a Nexus's starter demand) may
claim a request: it is then validated against the source's price instead of ours, recorded
with its source, and invoiced at the source's price; or the source refuses it
(`source-refused`). Everything after admission is the same job flow.

Feedback is looked at only for `lost-race` (flow.lost_race).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from autopilotd.config import Config
from autopilotd.nostr.events import SignedEvent
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.intake import RequestValidator
from autopilotd.nostr.nip90 import KIND_FEEDBACK, JobRequest
from autopilotd.nostr.reasons import Rejection, RejectReason
from autopilotd.ports.jobs import Admission, SourcePolicy
from autopilotd.ports.relays import RelaySubscription, SubscriptionFilter
from autopilotd.provider.board import JobBoard
from autopilotd.provider.dispatch import Dispatch
from autopilotd.provider.flow import JobFlow
from autopilotd.provider.presence import Presence
from autopilotd.provider.work import Works
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.store.jobs import Jobs
from autopilotd.vocab import JobSource

logger = logging.getLogger(__name__)

CATCH_UP_S = 600
"""How far back the subscription asks at start (jobs older than the ttl are refused anyway)."""


class Intake:
    def __init__(
        self,
        *,
        subscription: RelaySubscription,
        validator: RequestValidator,
        identity: NostrIdentity,
        presence: Presence,
        board: JobBoard,
        dispatch: Dispatch,
        flow: JobFlow,
        jobs: Jobs,
        works: Works,
        config: LiveConfig,
        events: EventBus,
        clock: Clock,
        sources: Sequence[SourcePolicy] = (),
    ) -> None:
        self._sub = subscription
        self._sources = tuple(sources)
        self._validator = validator
        self._identity = identity
        self._presence = presence
        self._board = board
        self._dispatch = dispatch
        self._flow = flow
        self._jobs = jobs
        self._works = works
        self._config = config
        self._events = events
        self._clock = clock

    async def subscribe(self) -> None:
        """Ask the relays for requests of the served kinds, and feedback addressed to us."""
        since = int(self._clock.now()) - CATCH_UP_S
        await self._sub.set_filters(
            [
                SubscriptionFilter(kinds=self._works.kinds(), since=since),
                SubscriptionFilter(
                    kinds=(KIND_FEEDBACK,), p=(self._identity.pubkey_hex,), since=since
                ),
            ]
        )

    async def run(self) -> None:
        unsubscribe = self._config.on_change(self._config_changed)
        try:
            async for incoming in self._sub.events():
                if incoming.event.kind == KIND_FEEDBACK:
                    await self._flow.lost_race(incoming.event)
                    continue
                if await self._jobs.get(incoming.event.id) is not None:
                    # A request it already took, sent again (a relay replays the last minutes
                    # when a subscription starts, as after a restart): not the buyer's doing,
                    # so it must not spend the buyer's rate, and it is not received twice.
                    self._validator.counters.add(RejectReason.ALREADY_TAKEN)
                    self._board.counted(self._validator.counters.snapshot())
                    continue
                claim = self._claim(incoming.event)
                if isinstance(claim, str):
                    self._validator.counters.add(RejectReason.SOURCE_REFUSED)
                    self._board.counted(self._validator.counters.snapshot())
                    logger.info("request %s refused by its source: %s", incoming.event.id, claim)
                    continue
                outcome = self._validate(incoming.event, claim)
                if isinstance(outcome, Rejection):
                    self._board.counted(self._validator.counters.snapshot())
                    continue
                request, price_msat = outcome
                await self.admit(request, incoming.received_at, claim, price_msat)
        finally:
            unsubscribe()

    def _validate(
        self, event: SignedEvent, claim: Admission | None
    ) -> tuple[JobRequest, int] | Rejection:
        """Validate a request against its kind's work (or its source's claim), and price it."""
        work = self._works.get(event.kind)
        if claim is None and work is not None and (why := work.refusal()) is not None:
            return self._refuse(Rejection(RejectReason.WRONG_KIND, why, event.id, event.pubkey))
        minimum = claim.min_bid_msat if claim is not None else None
        if minimum is None and work is not None:
            minimum = work.min_bid_msat()
        outcome = self._validator.validate(event, now=self._clock.now(), min_bid_msat=minimum)
        if isinstance(outcome, Rejection):
            return outcome
        if claim is not None:
            return outcome, claim.price_msat
        price = work.price_msat(outcome) if work is not None else None
        if price is None or isinstance(price, str):
            why = price or f"kind {event.kind} is not served"
            rejection = Rejection(RejectReason.MALFORMED, why, event.id, event.pubkey)
            return self._refuse(rejection, validated=True)
        if outcome.bid_msat < price:
            why = f"bid {outcome.bid_msat} < {price} for the limits it asks"
            rejection = Rejection(RejectReason.BID_TOO_LOW, why, event.id, event.pubkey)
            return self._refuse(rejection, validated=True)
        return outcome, price

    def _refuse(self, rejection: Rejection, *, validated: bool = False) -> Rejection:
        if validated:  # the validator counted it accepted: it is not, after all
            self._validator.counters.accepted -= 1
        self._validator.counters.add(rejection.reason)
        logger.info("request %s refused: %s", rejection.event_id, rejection.detail)
        return rejection

    async def _config_changed(self, old: Config, new: Config) -> None:
        if new.provider_price_sats != old.provider_price_sats:
            self._validator.set_min_bid(new.provider_price_sats * 1000)

    def _claim(self, event: SignedEvent) -> Admission | str | None:
        for source in self._sources:
            claim = source.admission(event)
            if claim is not None:
                return claim
        return None

    async def admit(
        self,
        request: JobRequest,
        received_at: float,
        claim: Admission | None = None,
        price_msat: int | None = None,
    ) -> None:
        if request.pubkey == self._identity.pubkey_hex:
            return  # our own request as a buyer: not a job for us, not even a preview
        self._events.publish("provider.request_received", request_id=request.id, kind=request.kind)
        if not self._presence.accepting():
            self._board.preview(request, received_at)
            await self._board.refresh()
            return
        if self._dispatch.full():
            self._board.busy()
            return
        job, new = await self._jobs.receive(
            request_id=request.id,
            buyer_pubkey=request.pubkey,
            kind=request.kind,
            request_json=request.json,
            price_msat=claim.price_msat
            if claim is not None
            else price_msat or self._config.current.provider_price_sats * 1000,
            source=claim.source if claim is not None else JobSource.NOSTR,
        )
        if new:
            self._dispatch.enqueue(job.request_id)
            await self._flow.notify(job)
