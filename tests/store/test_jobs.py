"""The jobs, outbox and earnings repositories, and the settlement unit of work that binds
earnings to the wallet's settled payment (M5, M7, M8, M10, N4)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from autopilotd.errors import Conflict
from autopilotd.provider.settlement import credit_job
from autopilotd.store import Store
from autopilotd.store.earnings import Earnings
from autopilotd.store.jobs import Job, Jobs
from autopilotd.store.ledger import Ledger
from autopilotd.store.outbox import Outbox, OutboxItem


class JobStore:
    """The provider's repositories over one store, and the settlement unit of work."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.jobs = Jobs(store)
        self.outbox = Outbox(store)
        self.earnings = Earnings(store)
        self.receive = self.jobs.receive
        self.advance = self.jobs.advance
        self.overdue = self.jobs.overdue
        self.milestones = self.earnings.milestones
        self.celebrate = self.earnings.celebrate
        self.record_publish = self.outbox.record_publish
        self.unpublished = self.outbox.unpublished

    async def credit(self, payment_hash: str) -> tuple[Job | None, bool]:
        return await credit_job(self._store, payment_hash, time.time())

    async def stage_event(
        self, request_id: str, purpose: str, event_id: str, event_json: str
    ) -> OutboxItem:
        return await self.outbox.stage(request_id, purpose, event_id, event_json)

    async def earnings_summary(self, day_start: float) -> dict[str, Any]:
        return dataclasses.asdict(await self.earnings.summary(day_start))


@pytest.fixture
async def stores(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = await Store.open(tmp_path / "db.sqlite3")
    yield JobStore(store), Ledger(store)
    await store.close()


def _hash_pair() -> tuple[str, str]:
    preimage = os.urandom(32).hex()
    return preimage, hashlib.sha256(bytes.fromhex(preimage)).hexdigest()


async def test_one_job_per_request_and_forward_only(stores: tuple[JobStore, Ledger]) -> None:
    jobs, _ = stores
    job, new = await jobs.receive(
        request_id="r1", buyer_pubkey="b", kind=5050, request_json="{}", price_msat=10_000
    )
    assert new and job.stage == "received"
    again, new = await jobs.receive(
        request_id="r1", buyer_pubkey="b", kind=5050, request_json="{}", price_msat=1
    )
    assert not new and again.price_msat == 10_000
    await jobs.advance("r1", "accepted")
    await jobs.advance("r1", "running")
    with pytest.raises(Conflict):
        await jobs.advance("r1", "received")
    with pytest.raises(Conflict):
        await jobs.advance("r1", "paid")  # only the wallet's settlement makes a job paid
    done = await jobs.advance(
        "r1",
        "delivered",
        result_json='{"x":1}',
        payment_hash="h1",
        bolt11="lnbc…",
        pay_deadline_at=1.0,
    )
    assert done.stage == "delivered" and done.payment_hash == "h1"
    assert [j.request_id for j in await jobs.overdue(now=2.0)] == ["r1"]


async def test_credit_needs_the_wallets_settled_payment(stores: tuple[JobStore, Ledger]) -> None:
    jobs, ledger = stores
    preimage, payment_hash = _hash_pair()
    await jobs.receive(
        request_id="r1", buyer_pubkey="b", kind=5050, request_json="{}", price_msat=10_000
    )
    for stage in ("accepted", "running"):
        await jobs.advance("r1", stage)  # type: ignore[arg-type]
    await jobs.advance(
        "r1", "delivered", payment_hash=payment_hash, bolt11="lnbc…", pay_deadline_at=9e9
    )
    job, new = await jobs.credit(payment_hash)  # M7: nothing settled in the wallet yet
    assert not new and job is not None and job.stage == "delivered"
    await ledger.credit_in(payment_hash, 10_000, preimage, "job r1")
    job, new = await jobs.credit(payment_hash)
    assert new and job is not None and job.stage == "paid" and job.paid_at
    _, again = await jobs.credit(payment_hash)  # M5: once
    assert not again
    summary = await jobs.earnings_summary(day_start=0)
    assert summary["lifetime_sats"] == 10 and summary["jobs_today"] == 1


async def test_underpayment_is_not_paid(stores: tuple[JobStore, Ledger]) -> None:
    jobs, ledger = stores
    preimage, payment_hash = _hash_pair()
    await jobs.receive(
        request_id="r2", buyer_pubkey="b", kind=5050, request_json="{}", price_msat=10_000
    )
    for stage in ("accepted", "running"):
        await jobs.advance("r2", stage)  # type: ignore[arg-type]
    await jobs.advance(
        "r2", "delivered", payment_hash=payment_hash, bolt11="lnbc…", pay_deadline_at=9e9
    )
    await ledger.credit_in(payment_hash, 9_000, preimage, "")
    job, new = await jobs.credit(payment_hash)
    assert not new and job is not None and job.stage == "delivered"


async def test_outbox_keeps_the_first_signed_event(stores: tuple[JobStore, Ledger]) -> None:
    jobs, _ = stores
    await jobs.receive(
        request_id="r3", buyer_pubkey="b", kind=5050, request_json="{}", price_msat=1000
    )
    first = await jobs.stage_event("r3", "result", "e1", '{"id":"e1"}')
    second = await jobs.stage_event("r3", "result", "e2", '{"id":"e2"}')
    assert second.event_id == "e1" == first.event_id
    assert [i.event_id for i in await jobs.unpublished()] == ["e1"]
    assert await jobs.record_publish(first.id, {"ws://a": "rejected", "ws://b": "error"}) == 0
    assert await jobs.record_publish(first.id, {"ws://a": "accepted"}) == 1
    assert await jobs.record_publish(first.id, {"ws://a": "error", "ws://b": "accepted"}) == 2
    assert await jobs.unpublished() == []


async def _paid_job(jobs: JobStore, ledger: Ledger, rid: str, sats: int) -> None:
    preimage, payment_hash = _hash_pair()
    await jobs.receive(
        request_id=rid, buyer_pubkey="b", kind=5050, request_json="{}", price_msat=sats * 1000
    )
    for stage in ("accepted", "running"):
        await jobs.advance(rid, stage)  # type: ignore[arg-type]
    await jobs.advance(rid, "delivered", payment_hash=payment_hash, bolt11="lnbc…")
    await ledger.credit_in(payment_hash, sats * 1000, preimage, f"job {rid}")
    _, new = await jobs.credit(payment_hash)
    assert new


async def test_milestones_are_reached_by_credits_and_celebrated_once(
    stores: tuple[JobStore, Ledger],
) -> None:
    jobs, ledger = stores
    assert [m["reached_at"] for m in await jobs.milestones()] == [None] * 4
    assert not await jobs.celebrate(10)  # not reached: nothing to celebrate
    await _paid_job(jobs, ledger, "r1", 7)
    assert [m["reached_at"] is not None for m in await jobs.milestones()] == [False] * 4
    await _paid_job(jobs, ledger, "r2", 21)  # 28 sats: crosses 10 and 25 at once
    reached = {m["sats"]: m for m in await jobs.milestones()}
    assert [s for s, m in reached.items() if m["reached_at"]] == [10, 25]
    assert not reached[10]["celebrated"]
    assert await jobs.celebrate(10)
    assert not await jobs.celebrate(10)  # once
    reached = {m["sats"]: m for m in await jobs.milestones()}
    assert reached[10]["celebrated"] and not reached[25]["celebrated"]


async def test_the_series_is_lifetime_sats_after_each_credit(
    stores: tuple[JobStore, Ledger],
) -> None:
    jobs, ledger = stores
    assert (await jobs.earnings_summary(day_start=0))["series"] == []
    for i, sats in enumerate((5, 11, 21)):
        await _paid_job(jobs, ledger, f"r{i}", sats)
    series = (await jobs.earnings_summary(day_start=0))["series"]
    assert [s for _, s in series] == [0, 5, 16, 37]
    times = [t for t, _ in series]
    assert times == sorted(times)
