"""The relay pool against real local relays on loopback: publish, receive, dedupe, health."""

from __future__ import annotations

import time

import nostr_sdk as sdk
import pytest

from autopilotd.nostr import nip90
from autopilotd.nostr.events import event_json
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.pool import (
    LinkState,
    PoolConfig,
    PublishOutcome,
    RelayHealth,
    RelayPool,
    SubscriptionFilter,
    running,
)
from autopilotd.nostr.relay import RunningRelay, local_relay

from .support import quiet, rogue_relay, rows, take, until


def _config(urls: list[str], **kw: object) -> PoolConfig:
    return PoolConfig(relays=tuple(urls), backoff_initial_s=0.1, backoff_max_s=0.5, **kw)  # type: ignore[arg-type]


async def test_publish_to_three_relays_and_receive_once(
    relays: list[RunningRelay], provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    urls = [r.url for r in relays]
    changes: list[RelayHealth] = []
    listen = RelayPool(_config(urls), on_health=changes.append)
    send = RelayPool(_config(urls))
    async with running(listen), running(send):
        await listen.subscribe(
            [SubscriptionFilter(kinds=(nip90.KIND_TEXT_GENERATION,), since=int(time.time()) - 60)]
        )
        await until(lambda: all(r.connected for r in listen.health() + send.health()))
        request = nip90.build_job_request(buyer, 5050, "hello", bid_msat=2000)
        report = await send.publish(request)
        assert report.event_id == request.id().to_hex()
        assert {a.outcome for a in report.answers} == {PublishOutcome.ACCEPTED}, report
        assert len(report.accepted) == 3 and report.any_accepted

        [got] = await take(listen, 1)
        assert got.event.id == report.event_id and got.relay in urls
        assert await quiet(listen, 0.5) == []  # the copies from the two other relays
        await until(lambda: sum(r.events_in for r in listen.health()) == 3)
        assert listen.stats().duplicates == 2 and listen.stats().delivered == 1

        sent = rows(send)
        assert all(r.events_out == 1 and r.publish_accepted == 1 for r in sent.values())
        seen = rows(listen)
        assert all(r.state == LinkState.CONNECTED and r.last_seen for r in seen.values())
        assert {c.url for c in changes if c.connected} == set(urls)


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
        report = await pool.publish(nip90.build_job_request(buyer, 5050, "x", bid_msat=1))
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

        pool = RelayPool(_config([first.url], overlap_s=30), on_health=note)
        async with running(pool):
            await pool.subscribe([SubscriptionFilter(kinds=(5050,), since=int(time.time()) - 60)])
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
                    missed = nip90.build_job_request(buyer, 5050, "while away", bid_msat=1)
                    assert (await direct.publish(missed)).any_accepted
                [got] = await take(pool, 1, timeout=15)
                assert got.event.id == missed.id().to_hex()
                assert pool.health()[0].connects == 2


async def test_a_relay_sending_off_filter_events_is_dropped(
    relays: list[RunningRelay], buyer: NostrIdentity
) -> None:
    off_filter = event_json(sdk.EventBuilder(sdk.Kind(1), "spam").finalize(buyer.keys))
    async with rogue_relay([off_filter]) as rogue:
        pool = RelayPool(_config([relays[0].url, rogue]))
        async with running(pool):
            await pool.subscribe([SubscriptionFilter(kinds=(5050,), since=int(time.time()) - 60)])
            await until(lambda: rows(pool)[rogue].state == LinkState.DROPPED)
            bad = rows(pool)[rogue]
            assert not bad.connected and "outside its subscription" in (bad.last_error or "")
            assert rows(pool)[relays[0].url].connected
            # the good relay still delivers, the dropped one is not reconnected
            sender = RelayPool(_config([relays[0].url]))
            async with running(sender):
                await until(lambda: sender.health()[0].connected)
                request = nip90.build_job_request(buyer, 5050, "still here", bid_msat=1)
                await sender.publish(request)
            [got] = await take(pool, 1)
            assert got.event.id == request.id().to_hex() and got.relay == relays[0].url
            assert rows(pool)[rogue].connects == 1
            report = await pool.publish(request)
            assert {a.url: a.outcome for a in report.answers}[rogue] == PublishOutcome.SKIPPED


async def test_a_refusal_is_reported_as_rejected_and_counted(buyer: NostrIdentity) -> None:
    async with local_relay(notes_per_minute=3) as strict:
        pool = RelayPool(_config([strict.url]))
        async with running(pool):
            await until(lambda: pool.health()[0].connected)
            answers = [
                (
                    await pool.publish(nip90.build_job_request(buyer, 5050, f"{n}", bid_msat=1))
                ).answers[0]
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
        await pool.subscribe([SubscriptionFilter(authors=("zz",))])
    report = await pool.publish(sdk.EventBuilder(sdk.Kind(1), "x").finalize(sdk.Keys.generate()))
    assert report.answers[0].outcome == PublishOutcome.SKIPPED and not report.any_accepted
