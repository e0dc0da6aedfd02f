"""Starter offers end to end: a provider with a session and its handler on the Nexus's relay
polls, acks, runs the NIP-90 request the Nexus publishes to it, and is paid by the treasury
once, for its own result and invoice; then it confirms with the payment hash."""

from __future__ import annotations

import json
import time

from support.nexus import PRICE_SATS, NexusLab, Provider, provider_online

from autopilotd.nexus.app import PRESENCE_MAX_AGE_S
from autopilotd.nostr.nip90 import build_result
from autopilotd.vocab import OfferStatus


async def test_a_starter_job_is_leased_run_and_paid_once(lab: NexusLab) -> None:
    async with lab.running() as nexus, provider_online(lab, nexus, "p") as provider:
        offer = await provider.leased()
        now = lab.clock.now()
        assert offer["status"] == "awaiting_ack" and offer["price_sats"] == PRICE_SATS
        assert offer["start_confirm_by"] == now + 15
        status, acked = await provider.act(offer["request_id"], "ack")
        assert status == 200 and acked["offer"]["status"] == "running"
        assert acked["offer"]["execution_expires_at"] == now + 75
        assert acked["offer"]["next_heartbeat_due_at"] == now + 30
        request = await provider.next_request()
        assert request.id == acked["offer"]["nostr_request_id"]
        assert request.pubkey == nexus.identity.pubkey_hex
        assert request.targets == (provider.pubkey,) and request.bid_msat == PRICE_SATS * 1000
        assert ("starter", offer["request_id"]) in _tags(request.json)
        assert (await provider.act(offer["request_id"], "ack"))[0] == 200  # acked already
        assert (await provider.act(offer["request_id"], "heartbeat"))[0] == 200
        status, early = await provider.act(
            offer["request_id"], "complete", {"payment_hash": "a" * 64}
        )
        assert (status, early["error"]) == (409, "starter_offer_payment_unknown")

        invoice = await provider.deliver(request)
        paid = await lab.offer_until(nexus, offer["request_id"], OfferStatus.COMPLETED)
        assert paid.payment_hash == invoice.payment_hash
        assert provider.node.balance_msat == PRICE_SATS * 1000

        done = {"payment_hash": invoice.payment_hash}
        for _ in range(2):  # the confirmation is idempotent
            status, answer = await provider.act(offer["request_id"], "complete", done)
            assert status == 200 and answer["offer"]["status"] == "completed"
            assert answer["offer"]["payment_hash"] == invoice.payment_hash
        status, answer = await provider.act(
            offer["request_id"], "complete", {"payment_hash": "b" * 64}
        )
        assert (status, answer["error"]) == (
            409,
            "starter_offer_already_completed_with_different_payment",
        )
        await provider.deliver(request)  # the same answers again: nothing more is paid
        assert lab.treasury.sends == 1 and provider.node.balance_msat == PRICE_SATS * 1000
        assert (await provider.act(offer["request_id"], "heartbeat"))[0] == 409


async def test_starter_demand_needs_the_providers_handler_on_this_relay(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        provider = Provider(lab, nexus, "p")
        await provider.open_session()
        answer = await provider.poll()
        assert not answer["eligible"] and answer["offers"] == []
        assert answer["reason"] == "starter_demand_requires_provider_presence_on_this_relay"
        async with provider.on_relay():
            await provider.announce()
            assert (await provider.leased())["status"] == "awaiting_ack"
            status, _ = await provider.act(
                (await provider.poll())["offers"][0]["request_id"],
                "fail",
                {"failure_reason": "busy"},
            )
            assert status == 200
            # The handler was signed at the real time, which runs ahead of the Nexus's clock (it
            # stood still while the test ran): move that clock past the presence window as
            # counted from the handler, or on a slow machine the handler is still recent.
            lab.clock.advance(time.time() - lab.clock.now() + PRESENCE_MAX_AGE_S + 1)
            answer = await provider.poll()
            assert not answer["eligible"] and answer["offers"] == []


async def test_the_relay_takes_job_events_only_from_providers_with_a_session(
    lab: NexusLab,
) -> None:
    async with lab.running() as nexus, provider_online(lab, nexus, "p") as provider:
        offer = await provider.leased()
        await provider.act(offer["request_id"], "ack")
        request = await provider.next_request()
        stranger = Provider(lab, nexus, "stranger")  # no session
        async with stranger.on_relay():
            report = await stranger.publish(build_result(stranger.identity, request, "x"))
            assert not report.any_accepted
            assert "restricted" in str(report.answers[0].message)
            await stranger.announce()  # a handler needs no session
            await stranger.open_session()
            report = await stranger.publish(build_result(stranger.identity, request, "x"))
            assert report.any_accepted, report


async def test_one_live_offer_per_session_and_one_new_offer_per_interval(lab: NexusLab) -> None:
    async with lab.running() as nexus, provider_online(lab, nexus, "p") as provider:
        first = await provider.leased()
        assert (await provider.leased())["request_id"] == first["request_id"]
        status, answer = await provider.act(first["request_id"], "fail", {"failure_reason": "busy"})
        assert status == 200 and answer["offer"]["status"] == "released"
        assert (await provider.act(first["request_id"], "fail", {"failure_reason": "busy"}))[
            0
        ] == 200
        status, answer = await provider.act(first["request_id"], "fail", {"failure_reason": "x"})
        assert status == 409
        assert (await provider.poll())["offers"] == []  # the dispatch interval is 12 s
        lab.clock.advance(12.5)
        second = await provider.leased()
        assert second["request_id"] != first["request_id"]
        assert (await provider.act(first["request_id"], "ack"))[0] == 409
        other = Provider(lab, nexus, "other")
        await other.open_session()
        status, answer = await other.act(second["request_id"], "ack")
        assert (status, answer["error"]) == (404, "starter_offer_not_found")


async def test_the_request_ttl_ends_the_lease_even_with_heartbeats(lab: NexusLab) -> None:
    async with lab.running() as nexus, provider_online(lab, nexus, "p") as provider:
        offer = await provider.leased()
        await provider.act(offer["request_id"], "ack")
        for _ in range(3):  # heartbeats keep the lease, each within 30 s
            lab.clock.advance(20)
            status, answer = await provider.act(offer["request_id"], "heartbeat")
            assert status == 200, answer
        lab.clock.advance(16)  # 76 s after the ack: past the request's 75 s
        status, answer = await provider.act(offer["request_id"], "heartbeat")
        assert (status, answer["error"]) == (409, "starter_offer_execution_expired")
        stats = (await lab.get(nexus.url + "/stats"))[1]
        assert stats["budget"]["reserved_sats"] == 0


def _tags(event_json: str) -> list[tuple[str, ...]]:
    return [tuple(t) for t in json.loads(event_json)["tags"]]
