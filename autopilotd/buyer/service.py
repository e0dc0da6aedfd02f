"""Buying compute in race mode (ARCHITECTURE §5, step 8).

A request is published with a bid. The first provider that sent both a non-error result and a
payment-required invoice within the budget (decoded from the BOLT11 itself, never trusted from
the event) is paid through our own wallet, with all of its guarantees. The request is done only
when the result is in, our wallet reports the payment settled, and that provider's `success`
arrived. Results from other providers get a kind 7000 `lost-race`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autopilotd.config import split_list
from autopilotd.errors import NotFound, UserError
from autopilotd.nostr.nip90 import (
    KIND_EMBEDDINGS,
    KIND_TEXT_GENERATION,
    FeedbackStatus,
    JobFeedback,
    JobResult,
    build_job_request,
    build_lost_race,
    parse_response,
    result_kind,
)
from autopilotd.nostr.pool import RelayPool
from autopilotd.nostr.port import PoolConfig, SubscriptionFilter
from autopilotd.runtime.context import Runtime
from autopilotd.runtime.snapshot import BuyerSection
from autopilotd.store import Store
from autopilotd.wallet.port import NodeError

logger = logging.getLogger(__name__)

PAY_RETRY_S = 5.0
COLUMNS = (
    "request_id, kind, prompt, budget_msat, status, provider, result, payment_hash, reason, "
    "created_at, updated_at, deadline_at"
)


@dataclass
class _Race:
    """What each provider has sent for one open request (memory; the row is the record)."""

    results: dict[str, JobResult] = field(default_factory=dict)
    invoices: dict[str, JobFeedback] = field(default_factory=dict)
    successes: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    lost_race_sent: set[str] = field(default_factory=set)
    retry_at: float = 0.0


class Buyer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store: Store = rt.store
        self.pool: RelayPool | None = None
        self._races: dict[str, _Race] = {}
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()

    async def row(self, request_id: str) -> dict[str, Any]:
        found = await self.store.fetchone(
            f"SELECT {COLUMNS} FROM buy_requests WHERE request_id = ?", (request_id,)
        )
        if found is None:
            raise NotFound(f"no request {request_id} of ours")
        data = dict(zip(COLUMNS.split(", "), found, strict=True))
        data["budget_sats"] = data["budget_msat"] // 1000
        return data

    async def _update(self, request_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        async with self.store.transaction() as tx:
            await tx.execute(
                f"UPDATE buy_requests SET {sets}, updated_at = ? WHERE request_id = ?",
                (*fields.values(), time.time(), request_id),
            )
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        await self.publish_section()

    async def publish_section(self) -> None:
        rows = await self.store.fetchall(
            "SELECT status, COUNT(*) FROM buy_requests GROUP BY status"
        )
        counts: dict[str, int] = {str(r[0]): int(r[1]) for r in rows}
        last = await self.store.fetchone(
            f"SELECT {COLUMNS} FROM buy_requests ORDER BY created_at DESC LIMIT 1"
        )
        section = BuyerSection(
            open_requests=int(counts.get("open", 0)) + int(counts.get("paying", 0)),
            paid_requests=int(counts.get("paid", 0)) + int(counts.get("done", 0)),
            last_request=None
            if last is None
            else {"request_id": last[0], "status": last[4], "provider": last[5]},
        )
        if section != self.rt.state.current.buyer:
            self.rt.state.replace(buyer=section)

    async def submit(
        self,
        kind: int,
        prompt: str,
        budget_sats: int,
        providers: list[str],
        timeout_s: float,
        max_tokens: int | None,
    ) -> dict[str, Any]:
        if self.pool is None or not self.pool.relays():
            raise UserError("buying needs relays: add one in Relay Connections (relays.add)")
        if kind not in (KIND_TEXT_GENERATION, KIND_EMBEDDINGS):
            raise UserError(f"kind must be {KIND_TEXT_GENERATION} or {KIND_EMBEDDINGS}")
        if budget_sats < 1:
            raise UserError("budget_sats must be at least 1")
        if not prompt.strip() or len(prompt) > 16_000:
            raise UserError("the prompt must be 1 to 16,000 characters")
        if not 5 <= timeout_s <= 3600:
            raise UserError("timeout_s must be between 5 and 3600")
        self.rt.wallet.require_node()
        identity = self.rt.identity
        assert identity is not None
        params: dict[str, str | int | float] = {}
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        event = build_job_request(
            identity, kind, prompt, bid_msat=budget_sats * 1000, params=params, providers=providers
        )
        rid = event.id().to_hex()
        now = time.time()
        async with self.store.transaction() as tx:
            await tx.execute(
                f"INSERT INTO buy_requests ({COLUMNS}) "
                "VALUES (?, ?, ?, ?, 'open', NULL, NULL, NULL, NULL, ?, ?, ?)",
                (rid, kind, prompt, budget_sats * 1000, now, now, now + timeout_s),
            )
        self._races[rid] = _Race()
        await self._resubscribe()
        sent_at = time.time()
        report = await self.pool.publish(event)
        self.rt.events.publish(
            "buyer.request_published",
            request_id=rid,
            kind=kind,
            budget_sats=budget_sats,
            sent_at=sent_at,
            relays_accepted=len(report.accepted),
        )
        if not report.any_accepted:
            await self._update(rid, status="failed", reason="no relay accepted the request")
        else:
            await self.publish_section()
        return await self.row(rid)

    async def apply_relays(self, relays: tuple[str, ...]) -> None:
        """Settings changed the relays while running: the pool follows at once."""
        if self.pool is not None:
            await self.pool.set_relays(relays)

    async def _resubscribe(self) -> None:
        assert self.pool is not None
        ids = tuple(self._races)
        if not ids:
            await self.pool.subscribe([])
            return
        kinds = (7000, result_kind(KIND_TEXT_GENERATION), result_kind(KIND_EMBEDDINGS))
        await self.pool.subscribe(
            [SubscriptionFilter(kinds=kinds, e=ids, since=int(time.time()) - 600)]
        )

    async def listen(self, pool: RelayPool) -> None:
        identity = self.rt.identity
        assert identity is not None
        async for incoming in pool.events():
            rid = next(
                (
                    t[1]
                    for t in incoming.event.tags
                    if len(t) > 1 and t[0] == "e" and t[1] in self._races
                ),
                None,
            )
            if rid is None:
                continue
            answer = parse_response(incoming.event, request_id=rid, buyer=identity)
            race = self._races[rid]
            if isinstance(answer, JobResult):
                race.results.setdefault(answer.provider, answer)
                self.rt.events.publish(
                    "buyer.result_received", request_id=rid, provider=answer.provider
                )
            elif isinstance(answer, JobFeedback):
                if answer.status == FeedbackStatus.PAYMENT_REQUIRED and answer.bolt11:
                    race.invoices.setdefault(answer.provider, answer)
                    self.rt.events.publish(
                        "buyer.invoice_received", request_id=rid, provider=answer.provider
                    )
                elif answer.status == FeedbackStatus.SUCCESS:
                    race.successes.add(answer.provider)
                elif answer.status == FeedbackStatus.ERROR:
                    race.errors[answer.provider] = answer.extra or "error"
            else:
                continue
            self._wake.set()

    async def decide(self) -> None:
        """Move each open request forward when what arrived allows it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for rid in list(self._races):
                await self._step(rid)

    async def _step(self, rid: str) -> None:
        race = self._races[rid]
        row = await self.row(rid)
        if row["status"] == "open" and time.time() >= race.retry_at:
            winner = await self._winner(row, race)
            if winner is not None:
                await self._pay(row, race, winner)
        row = await self.row(rid)
        if row["status"] == "paid" and row["provider"] in race.successes:
            await self._update(rid, status="done")
        # A finished request stays followed until its deadline, so a slower provider's
        # result still gets its lost-race (see expire()).
        await self._lost_races(row, race)

    async def _winner(self, row: dict[str, Any], race: _Race) -> str | None:
        for provider, result in race.results.items():
            invoice = race.invoices.get(provider)
            if invoice is None or provider in race.errors or not invoice.bolt11:
                continue
            try:
                decoded = self.rt.wallet.require_node().decode(invoice.bolt11)
            except NodeError:
                race.errors[provider] = "invalid invoice"
                continue
            if decoded.amount_msat is None or decoded.amount_msat > row["budget_msat"]:
                race.errors[provider] = "invoice above budget"
                continue
            del result
            return provider
        return None

    async def _pay(self, row: dict[str, Any], race: _Race, provider: str) -> None:
        rid = row["request_id"]
        invoice = race.invoices[provider]
        result = race.results[provider]
        assert invoice.bolt11 is not None
        decoded = self.rt.wallet.require_node().decode(invoice.bolt11)
        await self._update(
            rid,
            status="paying",
            provider=provider,
            result=result.content,
            payment_hash=decoded.payment_hash,
        )
        self.rt.events.publish("buyer.payment_sent", request_id=rid, provider=provider)
        try:
            paid = await self.rt.wallet.pay(
                invoice.bolt11, None, None, description=f"nip90 {rid[:16]}"
            )
        except UserError as exc:
            await self._payment_failed(row, race, f"payment failed: {exc.message}")
            return
        if paid["status"] == "succeeded":
            await self._update(rid, status="paid")
            self.rt.events.publish(
                "buyer.payment_settled",
                request_id=rid,
                provider=provider,
                payment_hash=paid["payment_hash"],
            )
        elif paid["status"] == "failed":
            await self._payment_failed(row, race, f"payment failed: {paid.get('failure')}")

    async def _payment_failed(self, row: dict[str, Any], race: _Race, reason: str) -> None:
        """Retry the same invoice until the deadline: the payee may be restarting.

        The wallet pays an invoice at most once, so a retry can never pay twice.
        """
        rid = row["request_id"]
        if time.time() + PAY_RETRY_S < row["deadline_at"]:
            race.retry_at = time.time() + PAY_RETRY_S
            await self._update(rid, status="open", reason=f"{reason}; retrying")
        else:
            await self._update(rid, status="failed", reason=reason)

    async def _lost_races(self, row: dict[str, Any], race: _Race) -> None:
        winner = row["provider"]
        if winner is None or self.pool is None:
            return
        identity = self.rt.identity
        assert identity is not None
        for provider, result in race.results.items():
            if provider != winner and provider not in race.lost_race_sent:
                race.lost_race_sent.add(provider)
                await self.pool.publish(
                    build_lost_race(
                        identity,
                        request_id=row["request_id"],
                        provider=provider,
                        result_id=result.id,
                    )
                )

    async def expire(self) -> None:
        while True:
            now = time.time()
            rows = await self.store.fetchall(
                "SELECT request_id FROM buy_requests WHERE status = 'open' AND deadline_at < ?",
                (now,),
            )
            for (rid,) in rows:
                await self._update(rid, status="expired", reason="no provider delivered in time")
            finished = await self.store.fetchall(
                "SELECT request_id FROM buy_requests WHERE deadline_at < ? "
                "AND status IN ('done', 'failed', 'expired')",
                (now,),
            )
            if any(r.retry_at for r in self._races.values()):
                self._wake.set()  # let due payment retries run
            stale = [rid for (rid,) in finished if rid in self._races]
            for rid in stale:
                self._races.pop(rid, None)
            if stale and self.pool is not None:
                await self._resubscribe()
            await asyncio.sleep(2.0)

    async def wait(self, request_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            row = await self.row(request_id)
            left = deadline - time.monotonic()
            if row["status"] in ("done", "failed", "expired") or left <= 0:
                return row
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                return await self.row(request_id)

    async def resume(self) -> None:
        rows = await self.store.fetchall(
            "SELECT request_id FROM buy_requests WHERE status IN ('open', 'paying', 'paid') "
            "OR deadline_at > ?",
            (time.time(),),
        )
        for (rid,) in rows:
            self._races[rid] = _Race()
        await self.publish_section()


class BuyerService:
    name = "buyer"

    def __init__(self, buyer: Buyer) -> None:
        self.buyer = buyer

    async def run(self, ready: Callable[[], None]) -> None:
        b = self.buyer
        pool = RelayPool(PoolConfig(relays=split_list(b.rt.config.relays)))
        b.pool = pool
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pool.run())
                await b.resume()
                await b._resubscribe()
                ready()
                tg.create_task(b.listen(pool))
                tg.create_task(b.decide())
                tg.create_task(b.expire())
        finally:
            b.pool = None
