"""Public stats: counts only, cached for at most a minute; no payment ids, node ids or keys."""

from __future__ import annotations

import json

from support.nexus import NexusLab, Provider, provider_online

from autopilotd.vocab import OfferStatus


async def test_stats_are_cached_for_at_most_a_minute(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        first = (await lab.get(nexus.url + "/stats"))[1]
        assert first == (await lab.get(nexus.url + "/api/stats"))[1]
        assert first["sessions_active"] == 0
        assert first["treasury"] == {"state": "ready", "reason": None}
        await Provider(lab, nexus, "p").open_session()
        lab.clock.advance(59)
        assert (await lab.get(nexus.url + "/stats"))[1] == first
        lab.clock.advance(2)
        fresh = (await lab.get(nexus.url + "/stats"))[1]
        assert fresh["sessions_active"] == 1 and fresh["as_of"] == lab.clock.now()


async def test_stats_count_offers_and_sats_and_name_nothing(lab: NexusLab) -> None:
    async with lab.running() as nexus, provider_online(lab, nexus, "p") as provider:
        offer = await provider.leased()
        await provider.act(offer["request_id"], "ack")
        request = await provider.next_request()
        invoice = await provider.deliver(request)
        await lab.offer_until(nexus, offer["request_id"], OfferStatus.COMPLETED)
        lab.clock.advance(61)
        stats = (await lab.get(nexus.url + "/stats"))[1]
        assert stats["starter_offers_24h"] == {
            "dispatched": 1,
            "started": 1,
            "completed": 1,
            "released": 0,
            "expired": 0,
            "payment_failures": 0,
        }
        assert stats["starter_demand_paid_sats_24h"] == 21
        text = json.dumps(stats)
        secrets = [
            invoice.payment_hash,
            invoice.bolt11,
            request.id,
            offer["request_id"],
            lab.treasury.node_id(),
            provider.node.node_id(),
            provider.pubkey,
            nexus.identity.pubkey_hex,
        ]
        assert not [s for s in secrets if s in text]
        assert not {"payment_hash", "node_id", "pubkey", "bolt11"} & set(_keys(stats))


def _keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *_keys(v))]
    return []
