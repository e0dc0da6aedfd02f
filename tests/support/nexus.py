"""A Nexus in one process for its tests: `run_nexus` on a temporary home with an in-memory
treasury node and a clock the test moves, and providers that talk to it as a real one does:
NIP-98 and bearer tokens over HTTP, NIP-42 and NIP-90 on its relay through the relay pool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from autopilotd.adapters.fake_lightning import FakeNetwork, FakeNode
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool, running
from autopilotd.config import Config
from autopilotd.nexus.app import Nexus, NexusSettings, run_nexus
from autopilotd.nexus.desk import DeskSettings, Template
from autopilotd.nexus.repos import Offer
from autopilotd.nostr.events import SignedEvent
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestParser
from autopilotd.nostr.nip90 import (
    KIND_TEXT_GENERATION,
    FeedbackStatus,
    JobRequest,
    build_feedback,
    build_handler,
    build_result,
)
from autopilotd.nostr.nip98 import auth_header
from autopilotd.paths import Paths
from autopilotd.ports.lightning import Invoice
from autopilotd.ports.relays import PublishReport, SubscriptionFilter
from autopilotd.runtime.clock import ManualClock
from autopilotd.vocab import OfferStatus

PRICE_SATS = 21
ONE_TEMPLATE = (Template(KIND_TEXT_GENERATION, "Say hi.", PRICE_SATS),)
"""One template, so every offer has the same price (the default rotates four)."""


async def until(predicate: Any, timeout: float = 10.0, step: float = 0.01) -> None:
    """Until `predicate()` holds (an awaitable result is awaited), failing after `timeout` s."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(step)


class NexusLab:
    """One Nexus home, its treasury node and the Lightning network and clock around it.

    `running()` starts the Nexus on that home and stops it at the end of the block; starting
    it again is a restart (same database, same relay storage, same treasury node).
    """

    def __init__(
        self,
        root: Path,
        http: aiohttp.ClientSession,
        *,
        lightning: FakeNetwork | None = None,
        clock: ManualClock | None = None,
    ) -> None:
        self.root = root
        self.http = http
        self.lightning = lightning or FakeNetwork()
        self.treasury: FakeNode = FakeNode(self.lightning, "treasury", 10_000_000)
        self.clock = clock or ManualClock(time.time())
        self.home = root / "nexus"
        self.serving: asyncio.Task[int] | None = None

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0, **desk: Any) -> AsyncIterator[Nexus]:
        """The Nexus, serving (on `port`, 0: a free one), with these desk settings (one
        template by default)."""
        config = Config(paths=Paths.for_home(self.home), wallet_network="regtest")
        settings = NexusSettings(
            port=port, desk=DeskSettings(**{"templates": ONE_TEMPLATE, **desk})
        )
        loop = asyncio.get_running_loop()
        started: asyncio.Future[Nexus] = loop.create_future()
        task = loop.create_task(
            run_nexus(
                config,
                settings,
                node_factory=lambda mnemonic: self.treasury,
                clock=self.clock,
                started=started.set_result,
            )
        )
        done, _ = await asyncio.wait([started, task], timeout=30, return_when="FIRST_COMPLETED")
        if task in done:
            raise AssertionError(f"the Nexus exited before serving: {task.result()}")
        assert started.done(), "the Nexus did not start"
        nexus = started.result()
        self.serving = task
        try:
            yield nexus
        finally:
            nexus.stop.set()
            assert await asyncio.wait_for(task, 30) == 0

    async def stop(self, nexus: Nexus) -> None:
        """Stop the running Nexus now and wait until it has (its `running` block then ends)."""
        nexus.stop.set()
        assert self.serving is not None
        assert await asyncio.wait_for(self.serving, 30) == 0

    async def post(
        self,
        url: str,
        *,
        token: str | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> tuple[int, dict[str, Any]]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else b""
        async with (http or self.http).post(url, data=data, headers=sent) as resp:
            return resp.status, await resp.json()

    async def get(self, url: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(url, headers=headers) as resp:
            return resp.status, await resp.json()

    async def offer(self, nexus: Nexus, offer_id: str) -> Offer:
        found = await nexus.offers.get(offer_id)
        assert found is not None
        return found

    async def offer_until(
        self, nexus: Nexus, offer_id: str, status: OfferStatus, timeout: float = 10.0
    ) -> Offer:
        async def reached() -> bool:
            return (await self.offer(nexus, offer_id)).status is status

        await until(reached, timeout)
        return await self.offer(nexus, offer_id)


class Provider:
    """A provider as the Nexus sees one: a key, a Lightning node, a session, a relay link."""

    def __init__(self, lab: NexusLab, nexus: Nexus, name: str) -> None:
        self.lab = lab
        self.nexus = nexus
        self.name = name
        self.identity: NostrIdentity = generate_identity()
        self.node = FakeNode(lab.lightning, name, 0)
        self.token: str | None = None
        self.pool: RelayPool | None = None
        self.requests = None

    @property
    def pubkey(self) -> str:
        return self.identity.pubkey_hex

    def session_request(
        self,
        body: dict[str, Any] | None = None,
        *,
        path: str = "/api/session",
        url: str | None = None,
        method: str = "POST",
        signed_body: bytes | None = None,
        created_at: int | None = None,
        identity: NostrIdentity | None = None,
    ) -> tuple[str, bytes, dict[str, str]]:
        """(url, body, headers) of a session request, signed as asked (defaults: correct)."""
        target = self.nexus.url + path
        data = json.dumps(body if body is not None else {}).encode()
        header = auth_header(
            identity or self.identity,
            url or target,
            method,
            data if signed_body is None else signed_body,
            created_at if created_at is not None else int(self.lab.clock.now()),
        )
        return target, data, {"Authorization": header, "Content-Type": "application/json"}

    async def open_session(self, http: aiohttp.ClientSession | None = None) -> dict[str, Any]:
        url, data, headers = self.session_request({"bound_nostr_pubkey": self.pubkey})
        async with (http or self.lab.http).post(url, data=data, headers=headers) as resp:
            answer: dict[str, Any] = await resp.json()
            assert resp.status == 200, answer
        self.token = answer["access_token"]
        return answer

    async def call(
        self, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        return await self.lab.post(self.nexus.url + path, token=self.token, body=body)

    async def poll(self) -> dict[str, Any]:
        status, answer = await self.call("/api/starter-demand/poll")
        assert status == 200, answer
        return answer

    async def act(
        self, offer_id: str, action: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        return await self.call(f"/api/starter-demand/offers/{offer_id}/{action}", body)

    async def leased(self) -> dict[str, Any]:
        """Poll once and return the one offer leased to this provider."""
        answer = await self.poll()
        assert answer["eligible"] and len(answer["offers"]) == 1, answer
        offer: dict[str, Any] = answer["offers"][0]
        return offer

    # -- the relay ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def on_relay(self) -> AsyncIterator[RelayPool]:
        """Connected to the Nexus's relay (NIP-42 with this key), following requests to it."""
        pool = RelayPool(PoolConfig(relays=(self.nexus.relay_url,)), identity=self.identity)
        async with running(pool):
            await until(lambda: pool.health()[0].connected)
            self.requests = pool.subscription("requests")
            await self.requests.set_filters(
                [SubscriptionFilter(kinds=(5050, 5060), p=(self.pubkey,))]
            )
            self.pool = pool
            try:
                yield pool
            finally:
                self.pool = None

    async def publish(self, event: SignedEvent) -> PublishReport:
        assert self.pool is not None, "use `async with provider.on_relay()` first"
        return await self.pool.publish(event)

    async def announce(self) -> None:
        """Publish this provider's NIP-89 handler on the Nexus's relay (its presence)."""
        report = await self.publish(build_handler(self.identity, [5050, 5060], d_tag="test"))
        assert report.any_accepted, report

    async def next_request(self, timeout: float = 10.0) -> JobRequest:
        """The next NIP-90 request p-tagged to this provider, parsed as the provider would."""
        assert self.requests is not None
        async with asyncio.timeout(timeout), contextlib.aclosing(self.requests.events()) as s:
            async for incoming in s:
                parsed = RequestParser(self.identity, IntakePolicy()).parse(
                    incoming.event, now=self.lab.clock.now()
                )
                assert isinstance(parsed, JobRequest), parsed
                return parsed
        raise AssertionError("unreachable")

    async def invoice(self, sats: int = PRICE_SATS) -> Invoice:
        return await self.node.create_invoice(sats * 1000, "starter job", 3600)

    def result(self, request: JobRequest, identity: NostrIdentity | None = None) -> SignedEvent:
        return build_result(identity or self.identity, request, "hi")

    def payment_required(
        self, request: JobRequest, invoice: Invoice, identity: NostrIdentity | None = None
    ) -> SignedEvent:
        assert invoice.amount_msat is not None
        return build_feedback(
            identity or self.identity,
            request,
            FeedbackStatus.PAYMENT_REQUIRED,
            amount_msat=invoice.amount_msat,
            bolt11=invoice.bolt11,
        )

    async def deliver(self, request: JobRequest, sats: int = PRICE_SATS) -> Invoice:
        """Publish a result and a payment-required invoice of `sats` for the request."""
        invoice = await self.invoice(sats)
        for event in (self.result(request), self.payment_required(request, invoice)):
            report = await self.publish(event)
            assert report.any_accepted, report
        return invoice


@contextlib.asynccontextmanager
async def provider_online(lab: NexusLab, nexus: Nexus, name: str) -> AsyncIterator[Provider]:
    """A provider with a session, connected to the relay, its handler published."""
    provider = Provider(lab, nexus, name)
    await provider.open_session()
    async with provider.on_relay():
        await provider.announce()
        yield provider
