"""The provider's side of starter demand against a real Nexus in the same process (its real
front, relay and desk; an in-memory treasury node and a clock the test moves): a starter job
through the normal job flow, paid by the treasury and credited only from the wallet; the
lease ending under a running job; going offline; a failed job; a request for an offer not
held; a Nexus that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from support.market import Market, Peer
from support.nexus import PRICE_SATS, NexusLab, until

from autopilotd.adapters.fake_inference import FakeInference
from autopilotd.adapters.local_relay import local_relay
from autopilotd.adapters.nexus_http import HttpNexus
from autopilotd.app import load_identity
from autopilotd.config import Config, split_list
from autopilotd.nexus.app import Nexus
from autopilotd.nostr.events import ShapeError, parse_raw
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90 import KIND_FEEDBACK, KIND_TEXT_GENERATION
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.paths import Paths
from autopilotd.ports.nexus import NexusSession
from autopilotd.runtime.sections import ProviderState, StarterState
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.store.outbox import Outbox
from autopilotd.vocab import OfferStatus, OutboxPurpose


@asynccontextmanager
async def provider(
    market: Market, nexus: Nexus, inference: FakeInference | None = None, relays: str = ""
) -> AsyncIterator[Peer]:
    """A daemon on the Nexus's relay (and `relays`), with the Nexus as its `nexus_url`."""
    async with market.peer(
        "provider", real_relays=True, nexus_url=nexus.url, inference=inference, relays=relays
    ) as peer:
        await peer.until(lambda s: s.facts.relays.connected == 1 + len(split_list(relays)))
        yield peer


async def online(peer: Peer) -> None:
    await peer.call("provider.online")
    await peer.until(lambda s: s.provider.state is ProviderState.ONLINE)


async def driven(
    market: Market, peer: Peer, predicate: Callable[[Snapshot], bool], timeout: float = 20.0
) -> Snapshot:
    """Move the shared clock a second at a time until `predicate` holds (polls and
    heartbeats are timers on it)."""
    async with asyncio.timeout(timeout):
        while not predicate(peer.snapshot):
            try:
                return await peer.until(predicate, timeout=0.05)
            except TimeoutError:
                market.clock.advance(1.0)
    return peer.snapshot


def offer_of(peer: Peer) -> dict[str, Any]:
    offer = peer.snapshot.starter.offer
    assert offer is not None
    return offer


async def test_a_starter_job_runs_through_the_normal_flow_and_the_wallet_credits_it(
    market: Market, lab: NexusLab
) -> None:
    async with lab.running() as nexus, provider(market, nexus) as peer:
        assert peer.snapshot.starter.state is StarterState.IDLE
        await online(peer)
        snap = await driven(market, peer, lambda s: s.starter.jobs_done == 1)
        assert snap.starter.sats_earned == PRICE_SATS
        assert snap.starter.last_offer is not None
        assert snap.starter.last_offer["outcome"] == "paid"
        [job] = (await peer.call("jobs.history"))["jobs"]
        assert (job["source"], job["stage"], job["price_sats"]) == ("starter", "paid", PRICE_SATS)
        assert job["buyer_pubkey"] == nexus.identity.pubkey_hex
        await peer.until(lambda s: s.earnings.lifetime_sats == PRICE_SATS)  # the wallet's
        offer = await lab.offer(nexus, snap.starter.last_offer["offer_id"])
        assert offer.status is OfferStatus.COMPLETED
        assert offer.payment_hash == job["payment_hash"] and lab.treasury.sends == 1
        names = [e["offer_id"] for e in peer.events("starter.completed")]
        assert names == [offer.id]
        status = await peer.call("starter.status")
        assert status["jobs_done"] == 1 and status["eligible"] is True


async def test_a_lease_that_ends_under_a_running_job_aborts_it_and_nothing_is_paid(
    market: Market, lab: NexusLab
) -> None:
    inference = FakeInference()
    inference.running.clear()  # the job runs until the test lets it go
    async with lab.running() as nexus, provider(market, nexus, inference) as peer:
        await online(peer)
        await driven(market, peer, lambda s: bool(s.jobs.active))
        offer_id = offer_of(peer)["offer_id"]
        market.clock.advance(31.0)  # past the heartbeat timeout: the next heartbeat is late
        snap = await peer.until(lambda s: s.starter.offer is None, timeout=10)
        assert snap.starter.last_offer is not None
        assert snap.starter.last_offer["reason"] == "starter_offer_heartbeat_missed"
        inference.running.set()
        [job] = (await peer.call("jobs.history"))["jobs"]
        job = await peer.job_until(job["request_id"], "failed")
        assert "starter_offer_heartbeat_missed" in job["reason"]
        outbox = Outbox(peer.app.rt.store)
        await until(lambda: outbox.item(job["request_id"], OutboxPurpose.ERROR))
        error = await outbox.item(job["request_id"], OutboxPurpose.ERROR)
        assert error is not None  # kind 7000 `error` to the Nexus, and no invoice
        assert await outbox.item(job["request_id"], OutboxPurpose.PAYMENT_REQUIRED) is None
        event = parse_raw(error.event_json)
        assert not isinstance(event, ShapeError) and event.kind == KIND_FEEDBACK
        assert (event.first("status") or ())[:2] == ("status", "error")
        assert (await lab.offer(nexus, offer_id)).status is OfferStatus.EXPIRED
        assert lab.treasury.sends == 0 and peer.snapshot.earnings.lifetime_sats == 0


async def test_going_offline_releases_the_offer_held_and_ends_its_job(
    market: Market, lab: NexusLab
) -> None:
    inference = FakeInference()
    inference.running.clear()
    async with lab.running() as nexus, provider(market, nexus, inference) as peer:
        await online(peer)
        await driven(market, peer, lambda s: bool(s.jobs.active))
        offer_id = offer_of(peer)["offer_id"]
        await peer.call("provider.offline")
        snap = await peer.until(lambda s: s.starter.offer is None)
        assert snap.starter.last_offer is not None
        assert snap.starter.last_offer["outcome"] == "released"
        assert snap.starter.state is StarterState.IDLE
        released = await lab.offer(nexus, offer_id)
        assert (released.status, released.reason) == (
            OfferStatus.RELEASED,
            "the provider went offline",
        )
        inference.running.set()
        [job] = (await peer.call("jobs.history"))["jobs"]
        await peer.job_until(job["request_id"], "failed")


async def test_a_failed_job_gives_its_offer_back_with_the_reason(
    market: Market, lab: NexusLab
) -> None:
    inference = FakeInference()
    inference.failure = "out of memory"
    async with lab.running() as nexus, provider(market, nexus, inference) as peer:
        await online(peer)
        snap = await driven(market, peer, lambda s: s.starter.last_offer is not None)
        assert snap.starter.last_offer is not None
        offer = await lab.offer(nexus, snap.starter.last_offer["offer_id"])
        assert offer.status is OfferStatus.RELEASED
        assert offer.reason == "inference failed: out of memory"
        assert lab.treasury.sends == 0


async def test_a_starter_request_for_an_offer_not_held_is_refused(
    market: Market, lab: NexusLab
) -> None:
    async with lab.running() as nexus, provider(market, nexus) as peer:
        await online(peer)
        await driven(market, peer, lambda s: s.starter.jobs_done == 1)
        stray = build_job_request(
            nexus.identity,
            KIND_TEXT_GENERATION,
            "Say hi.",
            bid_msat=1000,
            providers=[peer.snapshot.identity.hex if peer.snapshot.identity else ""],
            extra_tags=[["starter", "offer-never-made"]],
        )
        pool = peer.service("relays")._pool
        assert (await pool.publish(stray)).any_accepted
        snap = await peer.until(lambda s: s.jobs.rejections.get("source-refused", 0) == 1)
        assert len((await peer.call("jobs.history"))["jobs"]) == 1
        assert snap.earnings.lifetime_jobs == 1


async def test_a_nexus_that_goes_away_is_shown_unreachable_and_used_again_when_back(
    market: Market, lab: NexusLab
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        nexus = await stack.enter_async_context(lab.running(reserve_cap_sats=1))
        port = int(nexus.url.rsplit(":", 1)[1])
        other = await stack.enter_async_context(local_relay())  # online without the Nexus
        peer = await stack.enter_async_context(provider(market, nexus, relays=other.url))
        await online(peer)
        await driven(market, peer, lambda s: s.starter.state is StarterState.WAITING)
        session = peer.snapshot.starter.session
        await lab.stop(nexus)
        snap = await driven(market, peer, lambda s: s.starter.state is StarterState.UNREACHABLE)
        assert snap.starter.last_error and "not reachable" in snap.starter.last_error
        async with lab.running(port=port, reserve_cap_sats=1):  # the same Nexus, restarted
            snap = await driven(market, peer, lambda s: s.starter.state is StarterState.WAITING)
            assert snap.starter.session == session  # its session survived the restart
            assert snap.starter.last_error is None


@asynccontextmanager
async def busy_provider(
    market: Market, lab: NexusLab, inference: FakeInference
) -> AsyncIterator[tuple[Peer, int]]:
    """A provider online and busy with an open-network job (held by `inference`) when the
    Nexus, restarted with a budget, makes its first offer; yields it and the Nexus's port."""
    async with contextlib.AsyncExitStack() as stack:
        nexus = await stack.enter_async_context(lab.running(reserve_cap_sats=1))  # no offers
        port = int(nexus.url.rsplit(":", 1)[1])
        other = await stack.enter_async_context(local_relay())
        peer = await stack.enter_async_context(provider(market, nexus, inference, other.url))
        buyer = await stack.enter_async_context(
            market.peer("buyer", balance_msat=10_000_000, real_relays=True, relays=other.url)
        )
        await buyer.until(lambda s: s.facts.relays.connected == 1)
        await online(peer)
        await driven(market, peer, lambda s: s.starter.state is StarterState.WAITING)
        await market.buy(buyer)
        await peer.until(lambda s: bool(s.jobs.active))
        await lab.stop(nexus)
        await stack.enter_async_context(lab.running(port=port))  # now with a budget
        yield peer, port


async def test_an_offer_waits_for_a_free_slot_then_is_acked(market: Market, lab: NexusLab) -> None:
    inference = FakeInference()
    inference.running.clear()
    async with busy_provider(market, lab, inference) as (peer, _):
        snap = await driven(market, peer, lambda s: s.starter.state is StarterState.OFFERED)
        assert snap.starter.offer is not None and snap.starter.offer["status"] == "awaiting_ack"
        inference.running.set()  # the open-network job ends: the slot frees
        snap = await peer.until(lambda s: s.starter.jobs_done == 1, timeout=10)
        assert snap.starter.last_offer is not None
        assert snap.starter.last_offer["outcome"] == "paid"


async def test_an_offer_is_given_back_when_no_slot_frees_in_its_confirm_window(
    market: Market, lab: NexusLab
) -> None:
    inference = FakeInference()
    inference.running.clear()
    async with busy_provider(market, lab, inference) as (peer, _):
        await driven(market, peer, lambda s: s.starter.state is StarterState.OFFERED)
        snap = await driven(market, peer, lambda s: s.starter.last_offer is not None)
        assert snap.starter.last_offer is not None
        assert snap.starter.last_offer["outcome"] == "released"
        assert snap.starter.last_offer["reason"] == "the provider is busy"
        inference.running.set()


def peer_identity(market: Market, name: str = "provider") -> NostrIdentity:
    """A peer's identity, from the seed in its home (once its daemon has made it)."""
    return load_identity(Config(paths=Paths.for_home(market.root / name)))[0]


async def test_a_refused_session_is_tried_again_later_not_at_once(
    market: Market, lab: NexusLab
) -> None:
    """A Nexus that refuses the session (here: the signature's time is a minute and more off
    its clock) is asked again after a backoff, not in a loop."""
    opened: list[float] = []

    class Counting(HttpNexus):
        async def open_session(self) -> NexusSession:
            opened.append(market.clock.now())
            return await super().open_session()

    async with lab.running() as nexus:
        market.clock.advance(90.0)  # the Nexus's clock (shared) is now ahead of the signer's
        async with market.peer(
            "provider",
            real_relays=True,
            nexus_url=nexus.url,
            nexus=lambda url: Counting(url, peer_identity(market)),
        ) as peer:
            await peer.until(lambda s: s.facts.relays.connected == 1)
            await online(peer)
            snap = await peer.until(lambda s: s.starter.state is StarterState.UNREACHABLE)
            assert snap.starter.last_error and "created_at" in snap.starter.last_error
            await asyncio.sleep(0.3)  # real time: a loop would have asked many times by now
            assert len(opened) == 1
            market.clock.advance(1.5)  # past the first backoff: asked once more
            await until(lambda: len(opened) == 2)
