"""Relays added to and removed from a running pool, against real local relays on loopback."""

from __future__ import annotations

import time

from support.relays import take, until

from autopilotd.adapters.local_relay import RunningRelay
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool, running
from autopilotd.nostr import nip90
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.ports.relays import LinkState, PublishOutcome, RelayHealth, SubscriptionFilter


def _config(urls: list[str]) -> PoolConfig:
    return PoolConfig(relays=tuple(urls), backoff_initial_s=0.1, backoff_max_s=0.5)


async def test_a_pool_without_relays_runs_and_takes_one_later(
    relays: list[RunningRelay], buyer: NostrIdentity
) -> None:
    first, second = relays[0].url, relays[1].url
    changes: list[RelayHealth] = []
    removed: list[str] = []
    listen = RelayPool(_config([]))
    listen.on_health(changes.append)
    listen.on_removed(removed.append)
    send = RelayPool(_config([first, second]))
    async with running(listen), running(send):
        sub = listen.subscription("listen")
        await sub.set_filters(
            [SubscriptionFilter(kinds=(nip90.KIND_TEXT_GENERATION,), since=int(time.time()) - 60)]
        )
        empty = await listen.publish(build_job_request(buyer, 5050, "x", bid_msat=1000))
        assert empty.answers == () and not empty.any_accepted

        assert await listen.add_relay(first)
        assert not await listen.add_relay(first)  # already in
        await until(lambda: all(r.connected for r in listen.health() + send.health()))
        assert listen.relays() == (first,)
        assert {c.url for c in changes if c.connected} == {first}

        request = build_job_request(buyer, 5050, "hello", bid_msat=2000)
        await send.publish(request)
        [got] = await take(sub, 1)  # subscribed on the new link with the current filters
        assert got.event.id == request.id and got.relay == first

        await listen.set_relays([second])  # first out, second in
        assert removed == [first] and listen.relays() == (second,)
        await until(lambda: listen.health()[0].connected)
        assert [r.url for r in listen.health()] == [second]
        seen = len(changes)
        again = build_job_request(buyer, 5050, "again", bid_msat=2000)
        report = await listen.publish(again)
        assert [(a.url, a.outcome) for a in report.answers] == [(second, PublishOutcome.ACCEPTED)]
        assert all(c.url == second for c in changes[seen:])  # no news from the removed link

        assert await listen.remove_relay(second)
        assert not await listen.remove_relay(second)
        assert listen.health() == () and removed == [first, second]
    assert all(c.state != LinkState.DROPPED for c in changes)
