"""T3 (reduced): the same requests via 3 relays and across forced reconnects arrive once each.

200 job requests are published to 3 local relays while the listening pool is forced to
reconnect to every relay 3 times; each reconnect replays the stored requests (the catch-up
window covers them all), so the pool sees every request many times over. Each must be
delivered exactly once, and none may be missed.
"""

from __future__ import annotations

import time

from support.relays import quiet, take, until

from autopilotd.adapters.local_relay import RunningRelay
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool, running
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.ports.relays import SubscriptionFilter

REQUESTS = 200
RECONNECTS = 3


async def test_each_request_delivered_once_across_relays_and_reconnects(
    relays: list[RunningRelay], provider: NostrIdentity
) -> None:
    urls = tuple(r.url for r in relays)
    listen = RelayPool(
        PoolConfig(relays=urls, overlap_s=600, backoff_initial_s=0.05, backoff_max_s=0.2)
    )
    send = RelayPool(PoolConfig(relays=urls))
    buyers = [generate_identity() for _ in range(10)]
    requests = [
        build_job_request(
            buyers[n % 10], 5050, f"request {n}", bid_msat=1000, providers=[provider.pubkey_hex]
        )
        for n in range(REQUESTS)
    ]
    published: set[str] = set()
    delivered: list[str] = []
    sub = listen.subscription("listen")
    await sub.set_filters(
        [SubscriptionFilter(kinds=(5050,), p=(provider.pubkey_hex,), since=int(time.time()) - 60)]
    )
    async with running(listen), running(send):
        await until(lambda: all(r.connected for r in listen.health() + send.health()))
        per_round = REQUESTS // (RECONNECTS + 1)
        for round_ in range(RECONNECTS + 1):
            for event in requests[round_ * per_round : (round_ + 1) * per_round]:
                report = await send.publish(event)
                assert len(report.accepted) == 3
                published.add(report.event_id)
            delivered += [e.event.id for e in await take(sub, len(published) - len(delivered))]
            if round_ < RECONNECTS:
                for url in urls:
                    await listen.reconnect(url)
                # back: the first connect, and one more per reconnect so far
                await until(
                    lambda n=round_ + 2: all(
                        r.connected and r.connects >= n for r in listen.health()
                    )
                )
        delivered += [e.event.id for e in await quiet(sub, 1.0)]

    assert len(delivered) == REQUESTS == len(set(delivered))
    assert set(delivered) == published
    rows = listen.health()
    assert all(r.connects == RECONNECTS + 1 for r in rows)
    events_in = sum(r.events_in for r in rows)
    stats = listen.stats()
    assert stats.delivered == REQUESTS and stats.duplicates == events_in - REQUESTS
    assert events_in > 3 * REQUESTS  # the reconnects replayed stored requests
    print(
        f"T3: {REQUESTS} requests x 3 relays, {RECONNECTS} reconnects of each: "
        f"{events_in} events in, {stats.duplicates} duplicates dropped, {stats.delivered} delivered"
    )
