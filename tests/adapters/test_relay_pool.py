"""The relay pool against real local relays on loopback: publish, receive, dedupe, health."""

from __future__ import annotations

import asyncio
import time

import nostr_sdk as sdk
import pytest
from support.relays import quiet, rogue_relay, rows, take, until

from autopilotd.adapters.local_relay import RunningRelay, local_relay, start_relay
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool, running
from autopilotd.adapters.sdk_loop import LoopLoan
from autopilotd.nostr import nip90
from autopilotd.nostr.events import event_json, from_sdk
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.ports.relays import LinkState, PublishOutcome, RelayHealth, SubscriptionFilter


def _config(urls: list[str], **kw: object) -> PoolConfig:
    return PoolConfig(relays=tuple(urls), backoff_initial_s=0.1, backoff_max_s=0.5, **kw)  # type: ignore[arg-type]


async def test_publish_to_three_relays_and_receive_once(
    relays: list[RunningRelay], provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    urls = [r.url for r in relays]
    changes: list[RelayHealth] = []
    listen = RelayPool(_config(urls))
    listen.on_health(changes.append)
    sub = listen.subscription("listen")
    await sub.set_filters(
        [SubscriptionFilter(kinds=(nip90.KIND_TEXT_GENERATION,), since=int(time.time()) - 60)]
    )
    send = RelayPool(_config(urls))
    async with running(listen), running(send):
        await until(lambda: all(r.connected for r in listen.health() + send.health()))
        request = build_job_request(buyer, 5050, "hello", bid_msat=2000)
        report = await send.publish(request)
        assert report.event_id == request.id
        assert {a.outcome for a in report.answers} == {PublishOutcome.ACCEPTED}, report
        assert len(report.accepted) == 3 and report.any_accepted

        [got] = await take(sub, 1)
        assert got.event.id == report.event_id and got.relay in urls
        await until(lambda: sum(r.events_in for r in listen.health()) == 3)
        assert await quiet(sub, 0.5) == []  # the copies from the two other relays
        assert listen.stats().duplicates == 2 and listen.stats().delivered == 1

        sent = rows(send)
        assert all(r.events_out == 1 and r.publish_accepted == 1 for r in sent.values())
        seen = rows(listen)
        assert all(r.state == LinkState.CONNECTED and r.last_seen for r in seen.values())
        assert {c.url for c in changes if c.connected} == set(urls)


async def test_two_subscriptions_on_one_pool_each_get_the_events_they_match(
    relays: list[RunningRelay], provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    urls = [r.url for r in relays]
    pool = RelayPool(_config(urls))
    send = RelayPool(_config(urls))
    request = build_job_request(buyer, 5050, "hello", bid_msat=2000)
    jobs = pool.subscription("provider")
    await jobs.set_filters([SubscriptionFilter(kinds=(5050,), since=int(time.time()) - 60)])
    answers = pool.subscription("buyer")
    async with running(pool), running(send):
        await until(lambda: all(r.connected for r in pool.health() + send.health()))
        await answers.set_filters([SubscriptionFilter(e=(request.id,))])  # on a running pool
        feedback = nip90.sign(  # matches only the buyer's filter
            provider, 7000, "", [["status", "processing"], ["e", request.id]]
        )
        both = nip90.sign(  # a job request about the first one: matches both filters
            buyer, 5050, "", [["i", "again", "text"], ["bid", "2000"], ["e", request.id]]
        )
        for event in (request, feedback, both):
            assert len((await send.publish(event)).accepted) == 3

        provider_got = await take(jobs, 2)
        buyer_got = await take(answers, 2)
        assert sorted(e.event.id for e in provider_got) == sorted([request.id, both.id])
        assert sorted(e.event.id for e in buyer_got) == sorted([feedback.id, both.id])
        # nothing more: not the other consumer's event, nor a copy from another relay
        assert await asyncio.gather(quiet(jobs, 0.5), quiet(answers, 0.5)) == [[], []]
        assert pool.stats().delivered == 4


async def test_publish_reports_a_dead_relay_without_waiting_for_it(
    relays: list[RunningRelay], buyer: NostrIdentity
) -> None:
    urls = [r.url for r in relays]
    pool = RelayPool(_config(urls, publish_timeout_s=2.0))
    async with running(pool):
        await until(lambda: all(r.connected for r in pool.health()))
        relays[2].shutdown()
        await until(lambda: not rows(pool)[urls[2]].connected)
        started = time.monotonic()
        report = await pool.publish(build_job_request(buyer, 5050, "x", bid_msat=1))
        assert time.monotonic() - started < 2.0
        outcomes = {a.url: a.outcome for a in report.answers}
        assert outcomes[urls[0]] == outcomes[urls[1]] == PublishOutcome.ACCEPTED
        assert outcomes[urls[2]] == PublishOutcome.SKIPPED
        row = rows(pool)[urls[2]]
        assert row.state in (LinkState.DISCONNECTED, LinkState.CONNECTING)
        assert row.last_error


async def test_reconnects_with_catch_up_after_the_relay_comes_back(buyer: NostrIdentity) -> None:
    async with local_relay() as first:
        port = first.port
        waits: list[float] = []

        def note(row: RelayHealth) -> None:
            if row.state == LinkState.DISCONNECTED and row.next_retry_at is not None:
                waits.append(round(row.next_retry_at - time.time(), 1))

        pool = RelayPool(_config([first.url], overlap_s=30))
        pool.on_health(note)
        sub = pool.subscription("listen")
        await sub.set_filters([SubscriptionFilter(kinds=(5050,), since=int(time.time()) - 60)])
        async with running(pool):
            await until(lambda: pool.health()[0].connected)
            first.shutdown()
            await until(lambda: not pool.health()[0].connected)
            await until(lambda: len(waits) >= 5)  # capped exponential backoff while it is down
            assert waits[:5] == [0.1, 0.2, 0.4, 0.5, 0.5]
            assert pool.health()[0].last_error
            # published while the pool was away: the catch-up query must bring it
            async with local_relay(port=port) as second:
                direct = RelayPool(_config([second.url]))
                async with running(direct):
                    await until(lambda: direct.health()[0].connected)
                    missed = build_job_request(buyer, 5050, "while away", bid_msat=1)
                    assert (await direct.publish(missed)).any_accepted
                [got] = await take(sub, 1, timeout=15)
                assert got.event.id == missed.id
                assert pool.health()[0].connects == 2


async def test_a_relay_sending_off_filter_events_is_dropped(
    relays: list[RunningRelay], buyer: NostrIdentity
) -> None:
    off_filter = event_json(from_sdk(sdk.EventBuilder(sdk.Kind(1), "spam").finalize(buyer.keys)))
    async with rogue_relay([off_filter]) as rogue:
        pool = RelayPool(_config([relays[0].url, rogue]))
        sub = pool.subscription("listen")
        await sub.set_filters([SubscriptionFilter(kinds=(5050,), since=int(time.time()) - 60)])
        async with running(pool):
            await until(lambda: rows(pool)[rogue].state == LinkState.DROPPED)
            bad = rows(pool)[rogue]
            assert not bad.connected and "outside its subscription" in (bad.last_error or "")
            assert rows(pool)[relays[0].url].connected
            # the good relay still delivers, the dropped one is not reconnected
            sender = RelayPool(_config([relays[0].url]))
            async with running(sender):
                await until(lambda: sender.health()[0].connected)
                request = build_job_request(buyer, 5050, "still here", bid_msat=1)
                await sender.publish(request)
            [got] = await take(sub, 1)
            assert got.event.id == request.id and got.relay == relays[0].url
            assert rows(pool)[rogue].connects == 1
            report = await pool.publish(request)
            assert {a.url: a.outcome for a in report.answers}[rogue] == PublishOutcome.SKIPPED


async def test_a_refusal_is_reported_as_rejected_and_counted(buyer: NostrIdentity) -> None:
    async with local_relay(notes_per_minute=3) as strict:
        pool = RelayPool(_config([strict.url]))
        async with running(pool):
            await until(lambda: pool.health()[0].connected)
            answers = [
                (await pool.publish(build_job_request(buyer, 5050, f"{n}", bid_msat=1))).answers[0]
                for n in range(5)
            ]
    assert [a.outcome for a in answers] == [PublishOutcome.ACCEPTED] * 3 + [
        PublishOutcome.REJECTED
    ] * 2
    assert answers[-1].message.startswith("rate-limited:")
    row = pool.health()[0]
    assert (row.events_out, row.publish_accepted, row.publish_rejected) == (5, 3, 2)


async def test_bad_configuration_is_refused_up_front() -> None:
    assert RelayPool(PoolConfig(relays=())).health() == ()  # no relays is allowed: add later
    with pytest.raises(ValueError):
        RelayPool(PoolConfig(relays=("not a url",)))
    pool = RelayPool(PoolConfig(relays=("ws://127.0.0.1:1",)))
    with pytest.raises(ValueError):
        await pool.subscription("listen").set_filters([SubscriptionFilter(authors=("zz",))])
    report = await pool.publish(
        from_sdk(sdk.EventBuilder(sdk.Kind(1), "x").finalize(sdk.Keys.generate()))
    )
    assert report.answers[0].outcome == PublishOutcome.SKIPPED and not report.any_accepted


async def test_a_pool_with_an_identity_answers_a_relay_that_asks_writers_to_authenticate(
    buyer: NostrIdentity,
) -> None:
    """NIP-42: the SDK calls our signer back from its own thread, which needs the loop lent
    (sdk_loop.py) even where no local relay runs (a daemon's own process)."""
    relay = await start_relay(auth_writes=True)
    try:
        assert LoopLoan.holders == 0  # nothing in this process lends the loop but the pool
        anonymous = RelayPool(_config([relay.url]))
        signed = RelayPool(_config([relay.url]), identity=buyer)
        async with running(anonymous), running(signed):
            await until(lambda: anonymous.health()[0].connected and signed.health()[0].connected)
            refused = await anonymous.publish(build_job_request(buyer, 5050, "a", bid_msat=1))
            taken = await signed.publish(build_job_request(buyer, 5050, "b", bid_msat=1))
        assert refused.answers[0].outcome == PublishOutcome.REJECTED
        assert taken.answers[0].outcome == PublishOutcome.ACCEPTED, taken.answers[0].message
        assert LoopLoan.holders == 0  # lent while the pool ran, and given back
    finally:
        relay.shutdown()
