"""The NIP-90 exchange end to end on the fake pool: what a provider and a buyer service do."""

from __future__ import annotations

import asyncio
import time

from autopilotd.adapters.fake_relays import FakeNetwork
from autopilotd.nostr import nip90
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.intake import RequestValidator
from autopilotd.nostr.nip90 import FeedbackStatus, JobRequest
from autopilotd.nostr.nip90_buyer import JobFeedback, JobResult, build_job_request, parse_response
from autopilotd.nostr.reasons import Rejection, RejectReason
from autopilotd.ports.relays import PublishOutcome, RelayAnswer, SubscriptionFilter


async def test_provider_and_buyer_over_the_fake_pool(
    provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    net = FakeNetwork()
    provider_pool, buyer_pool = net.pool(), net.pool()
    since = int(time.time()) - 60
    jobs = provider_pool.subscription("provider")
    await jobs.set_filters(
        [SubscriptionFilter(kinds=tuple(sorted(nip90.SERVED_KINDS)), since=since)]
    )
    validator = RequestValidator(provider)

    request = build_job_request(buyer, 5050, "2+2?", bid_msat=4000)
    request_id = request.id
    answers = buyer_pool.subscription("buyer")
    await answers.set_filters(
        [
            SubscriptionFilter(
                kinds=(7000, 6050), e=(request_id,), p=(buyer.pubkey_hex,), since=since
            )
        ]
    )
    assert (await buyer_pool.publish(request)).any_accepted

    # provider: intake, processing, result, then the invoice
    incoming = await anext(jobs.events())
    job = validator.validate(incoming.event)
    assert isinstance(job, JobRequest) and job.prompt == "2+2?"
    await provider_pool.publish(nip90.build_feedback(provider, job, FeedbackStatus.PROCESSING))
    result = await provider_pool.publish(nip90.build_result(provider, job, "4", amount_msat=4000))
    assert result.any_accepted
    await provider_pool.publish(
        nip90.build_feedback(
            provider, job, FeedbackStatus.PAYMENT_REQUIRED, amount_msat=4000, bolt11="lnbcrt40n1"
        )
    )

    # buyer: every answer is checked against its request before it is believed
    seen = []
    stream = answers.events()
    for _ in range(3):
        item = await asyncio.wait_for(anext(stream), 1)
        seen.append(parse_response(item.event, request_id=request_id, buyer=buyer))
    assert [type(s) for s in seen] == [JobFeedback, JobResult, JobFeedback]
    assert isinstance(seen[1], JobResult) and seen[1].content == "4"
    assert isinstance(seen[2], JobFeedback) and seen[2].bolt11 == "lnbcrt40n1"


async def test_fake_relays_can_refuse_and_hostile_events_can_be_injected(
    provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    net = FakeNetwork(["ws://a", "ws://b"])
    jobs = net.pool().subscription("provider")
    await jobs.set_filters([SubscriptionFilter(kinds=(5050,))])
    net.answer(
        lambda url, raw: (
            RelayAnswer(url, PublishOutcome.REJECTED, "blocked: no") if url == "ws://b" else None
        )
    )
    report = await net.pool().publish(build_job_request(buyer, 5050, "x", bid_msat=1))
    assert [a.outcome for a in report.answers] == [PublishOutcome.ACCEPTED, PublishOutcome.REJECTED]
    stream = jobs.events()
    assert (await anext(stream)).event.id == report.event_id
    net.inject(build_job_request(buyer, 5050, "x", bid_msat=1, created_at=1).json)
    injected = await anext(stream)
    outcome = RequestValidator(provider).validate(injected.event)
    assert isinstance(outcome, Rejection) and outcome.reason == RejectReason.TOO_OLD
