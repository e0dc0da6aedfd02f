"""History sync against real relays (nostr-sdk's LocalRelay) with the real relay pool: two
daemons with one key converge, a relay that lost events gets them again, a relay that refuses
large negentropy queries is reconciled window by window, one without negentropy is compared
whole, an interrupted round loses nothing, and what is not our record is never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType, web
from support.relays import serve_ws, until

from autopilotd.adapters.local_relay import local_relay, start_relay
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool, running
from autopilotd.config import Config
from autopilotd.errors import NotReady
from autopilotd.nostr.history import KIND_HISTORY, PROTECTED_TAG, HistoryRecord, seal
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.nip90 import sign
from autopilotd.paths import Paths
from autopilotd.runtime import started
from autopilotd.runtime.clock import SystemClock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import DaemonSection
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import StateStore
from autopilotd.store import Store
from autopilotd.store.sync import SyncEvents
from autopilotd.sync import service as sync_service
from autopilotd.sync.service import SyncService

pytestmark = pytest.mark.timeout(120)


@dataclass
class Side:
    """One daemon's sync: its store, its pool and its sync service (running)."""

    store: Store
    pool: RelayPool
    sync: SyncService
    events: EventBus

    async def history(self) -> list[dict[str, Any]]:
        return await self.sync.history(1000, None)

    async def count(self, table: str) -> int:
        row = await self.store.fetchone(f"SELECT COUNT(*) FROM {table}")
        assert row is not None
        return int(row[0])


def service(
    home: Path, identity: NostrIdentity, relays: tuple[str, ...], store: Store, events: EventBus
) -> tuple[RelayPool, SyncService]:
    """A relay pool over `relays` and a sync service on it (neither started)."""
    state = StateStore(
        Snapshot(
            seq=0,
            daemon=DaemonSection(version="t", pid=1, started_at=0.0, home="h", session_id="s"),
        ),
        events,
        SystemClock(),
    )
    pool = RelayPool(
        PoolConfig(relays=relays, backoff_initial_s=0.1, backoff_max_s=0.5), identity=identity
    )
    sync = SyncService(
        pool=pool,
        identity=identity,
        records=SyncEvents(store),
        writer=state.writer("sync"),
        events=events,
        config=LiveConfig(Config(paths=Paths.for_home(home), relays=", ".join(relays))),
    )
    return pool, sync


@contextlib.asynccontextmanager
async def side(home: Path, identity: NostrIdentity, relays: tuple[str, ...]) -> AsyncIterator[Side]:
    store = await Store.open(home / "db.sqlite")
    events = EventBus()
    pool, sync = service(home, identity, relays, store, events)
    ready = asyncio.Event()
    try:
        async with running(pool):
            await until(lambda: all(h.connected for h in pool.health()))
            task = asyncio.create_task(sync.run(ready.set))
            await asyncio.wait_for(ready.wait(), 10)
            try:
                yield Side(store, pool, sync, events)
            finally:
                if task.done():
                    task.result()  # the service must not have died
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await store.close()


async def add_job(s: Side, n: int, stage: str, *, paid: bool = False) -> str:
    rid = f"{n:064x}"
    now = time.time()
    async with s.store.write() as tx:
        await tx.execute(
            "INSERT INTO jobs (request_id, buyer_pubkey, kind, stage, request_json, price_msat, "
            "received_at, updated_at, paid_at) VALUES (?, ?, 5050, 'received', '{}', 10000, ?, ?, ?)",
            (rid, "b" * 64, now - 1, now - 1, None),
        )
    await s.sync.capture()  # the step a real job passes through
    async with s.store.write() as tx:
        await tx.execute(
            "UPDATE jobs SET stage = ?, updated_at = ?, paid_at = ? WHERE request_id = ?",
            (stage, now, now if paid else None, rid),
        )
    s.events.publish("provider.test_transition", request_id=rid)  # what wakes capture
    return rid


def steps(history: list[dict[str, Any]]) -> dict[str, str]:
    return {f"{h['type']}:{h['id']}": h["step"] for h in history}


async def records_on(s: Side, n: int) -> None:
    await until(lambda: s.sync._writer.current.records >= n)


async def test_two_daemons_with_one_key_converge_and_restored_is_not_earnings(
    tmp_path: Path,
) -> None:
    me = generate_identity()
    async with local_relay() as relay:
        async with side(tmp_path / "a", me, (relay.url,)) as a:
            paid = await add_job(a, 1, "paid", paid=True)
            await add_job(a, 2, "failed")
            await records_on(a, 4)  # received + paid, received + failed
            async with side(tmp_path / "b", me, (relay.url,)) as b:
                await b.sync.reconcile([relay.url])
                theirs, ours = await b.history(), await a.history()
                assert (
                    steps(theirs)
                    == steps(ours)
                    == {f"job:{paid}": "paid", f"job:{2:064x}": "failed"}
                )
                assert all(h["restored"] for h in theirs) and not any(h["restored"] for h in ours)
                assert await b.count("earnings") == 0 and await b.count("jobs") == 0
                assert b.sync._writer.current.restored == 2
                row = b.sync._writer.current.relays[0]  # its start-up round, then this one
                assert row["method"] == "negentropy" and row["error"] is None
                assert await b.count("sync_events") == 4
                # B's own job reaches A; and a second round has nothing to do on either side
                mine = await add_job(b, 3, "delivered")
                await records_on(b, 6)
                await a.sync.reconcile([relay.url])
                assert steps(await a.history()) == steps(await b.history())
                assert steps(await a.history())[f"job:{mine}"] == "delivered"
                again = (await b.sync.reconcile([relay.url]))[0]
                assert (again.have, again.need, again.fetched) == (0, 0, 0)
                assert await a.count("sync_events") == await b.count("sync_events") == 6


async def test_a_relay_that_lost_events_gets_them_again_when_it_reconnects(
    tmp_path: Path,
) -> None:
    me = generate_identity()
    first = await start_relay()  # in memory: a restart loses everything
    try:
        async with side(tmp_path / "a", me, (first.url,)) as a:
            for n in range(3):
                await add_job(a, n + 1, "paid", paid=True)
            await records_on(a, 6)
            first.shutdown()
            await until(lambda: not a.pool.health()[0].connected)
            first = await start_relay(port=first.port)  # empty now
            # the pool reconnects; the sync service reconciles a relay that (re)connects
            await until(
                lambda: any(r["uploaded"] == 6 for r in a.sync._writer.current.relays), timeout=30
            )
            async with side(tmp_path / "b", me, (first.url,)) as b:
                await b.sync.reconcile([first.url])
                assert steps(await b.history()) == steps(await a.history())
    finally:
        first.shutdown()


@contextlib.asynccontextmanager
async def refusing_proxy(
    upstream: str, refuse: Callable[[dict[str, Any]], str | None]
) -> AsyncIterator[str]:
    """A websocket proxy in front of a real relay that answers NEG-OPEN with NEG-ERR when
    `refuse(filter)` gives a reason, and passes everything else through both ways."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async with ClientSession() as http, http.ws_connect(upstream) as up:

            async def down() -> None:
                async for msg in up:
                    if msg.type == WSMsgType.TEXT:
                        await ws.send_str(msg.data)

            pump = asyncio.create_task(down())
            try:
                async for msg in ws:
                    if msg.type != WSMsgType.TEXT:
                        continue
                    frame = json.loads(msg.data)
                    if frame[0] == "NEG-OPEN" and (reason := refuse(frame[2])) is not None:
                        await ws.send_str(json.dumps(["NEG-ERR", frame[1], reason]))
                        continue
                    await up.send_str(msg.data)
            finally:
                pump.cancel()
        return ws

    async with serve_ws(handler) as url:
        yield url


WINDOW_LIMIT_S = 50_000_000


def too_large(f: dict[str, Any]) -> str | None:
    span = f.get("until", 2**40) - f.get("since", 0)
    return "blocked: too many records, narrow the query" if span > WINDOW_LIMIT_S else None


@pytest.mark.parametrize(
    ("refuse", "method"),
    [(too_large, "windows"), (lambda f: "error: negentropy is disabled here", "fetch")],
    ids=["too-large", "no-negentropy"],
)
async def test_a_relay_that_refuses_negentropy_still_converges(
    tmp_path: Path, refuse: Callable[[dict[str, Any]], str | None], method: str
) -> None:
    me = generate_identity()
    # The relay answers at most 4 events a query: the fallback reads page by page, and a
    # chunk of ids answered in part is asked again for the rest.
    capped = local_relay(max_results=4)
    async with capped as relay, refusing_proxy(relay.url, refuse) as proxy:
        async with side(tmp_path / "a", me, (relay.url,)) as a:
            for n in range(3):
                await add_job(a, n + 1, "paid", paid=True)
            await records_on(a, 6)
            async with side(tmp_path / "b", me, (proxy,)) as b:
                (row,) = await b.sync.reconcile([proxy])
                assert row.error is None, row
                assert row.method == method  # this round, and B's first when it connected
                assert await b.count("sync_events") == 6
                assert steps(await b.history()) == steps(await a.history())
                # windows: the refused whole, then windows; fetch: pages of 4, then an empty one
                assert row.round_trips >= 3, row


async def test_an_interrupted_round_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = generate_identity()
    monkeypatch.setattr(sync_service, "FETCH_CHUNK", 2)
    async with local_relay() as relay:
        async with side(tmp_path / "a", me, (relay.url,)) as a:
            for n in range(4):
                await add_job(a, n + 1, "paid", paid=True)
            await records_on(a, 8)
        async with side(tmp_path / "b", me, (relay.url,)) as b:
            await until(lambda: bool(b.sync._writer.current.relays))  # its start-up round
            async with b.store.write() as tx:
                await tx.execute("DELETE FROM sync_events")  # as if it had not run
            stored = SyncEvents.add
            calls = 0

            async def crash_after_first_chunk(self: SyncEvents, records: Any) -> int:
                nonlocal calls
                calls += 1
                if calls == 2:
                    raise asyncio.CancelledError  # the process dies before the second chunk
                return await stored(self, records)

            monkeypatch.setattr(SyncEvents, "add", crash_after_first_chunk)
            with pytest.raises(asyncio.CancelledError):
                await b.sync.reconcile([relay.url])
            monkeypatch.setattr(SyncEvents, "add", stored)
            assert await b.count("sync_events") == 2  # the first chunk, committed
        async with side(tmp_path / "b", me, (relay.url,)) as b2:
            await b2.sync.reconcile([relay.url])
            assert await b2.count("sync_events") == 8
            ids = await b2.store.fetchall("SELECT event_id FROM sync_events")
            assert len({r[0] for r in ids}) == 8


async def test_what_is_not_our_record_is_refused_and_never_applied(tmp_path: Path) -> None:
    me = generate_identity()
    async with local_relay() as relay:
        async with side(tmp_path / "a", me, (relay.url,)) as a:
            await add_job(a, 1, "paid", paid=True)
            await records_on(a, 2)
            bad = [
                sign(me, KIND_HISTORY, "not encrypted", [PROTECTED_TAG]),
                sign(me, KIND_HISTORY, json.dumps({"v": 1}), [PROTECTED_TAG]),
            ]
            for event in bad:
                assert (await a.pool.publish(event)).any_accepted
            async with side(tmp_path / "b", me, (relay.url,)) as b:
                (row,) = await b.sync.reconcile([relay.url])
                # the two that are not records stay on the relay, refused at every round
                assert (row.need, row.fetched, row.refused) == (2, 0, 2)
                assert await b.count("sync_events") == 2
                assert steps(await b.history()) == steps(await a.history())


async def test_the_same_records_from_two_relays_are_kept_once(tmp_path: Path) -> None:
    me = generate_identity()
    async with local_relay() as one, local_relay() as two:
        async with side(tmp_path / "a", me, (one.url, two.url)) as a:
            for n in range(3):
                await add_job(a, n + 1, "paid", paid=True)
            await records_on(a, 6)
            await a.sync.reconcile([one.url, two.url])  # both hold all six
            async with side(tmp_path / "b", me, (one.url, two.url)) as b:
                rounds = await b.sync.reconcile([one.url, two.url])
                assert all(r.error is None and r.need == 0 for r in rounds)  # after start-up
                assert await b.count("sync_events") == 6
                assert steps(await b.history()) == steps(await a.history())


async def test_what_a_thing_is_does_not_depend_on_the_order_its_records_came_in(
    tmp_path: Path,
) -> None:
    me = generate_identity()
    rid = "ab" * 32
    made = [
        HistoryRecord("job", rid, step, 1_800_000_000.0 + i, {"kind": 5050})
        for i, step in enumerate(("received", "accepted", "running", "delivered", "paid"))
    ]
    sealed = [SyncService._stored(seal(me, r), r, "relay") for r in made]
    results = []
    for order in (sealed, sealed[::-1], sealed[2:] + sealed[:2] + sealed[1:3]):
        store = await Store.open(tmp_path / f"{len(results)}.sqlite")
        try:
            records = SyncEvents(store)
            for one in order:
                await records.add([one])  # one at a time, some twice
            results.append([(h["id"], h["step"]) for h in await records.current(10)])
            assert (await records.count())[0] == 5
        finally:
            await store.close()
    assert results == [[(rid, "paid")]] * 3


async def test_sync_now_while_starting_waits_for_the_start_instead_of_finding_no_relay(
    tmp_path: Path,
) -> None:
    """Asked before the service knows its relays, a round is not an empty answer (which reads
    as "no relay"): it waits for the start, or says the service is not running yet."""
    me = generate_identity()
    async with local_relay() as relay:
        store = await Store.open(tmp_path / "db.sqlite")
        try:
            pool, sync = service(tmp_path, me, (relay.url,), store, EventBus())
            async with running(pool):
                await until(lambda: all(h.connected for h in pool.health()))
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(started, "START_WAIT_S", 0.05)
                    with pytest.raises(NotReady, match="history sync is not running yet"):
                        await sync.reconcile_now()
                asked = asyncio.create_task(sync.reconcile_now())
                await asyncio.sleep(0)  # asked first, started after
                task = asyncio.create_task(sync.run(lambda: None))
                try:
                    rounds = await asyncio.wait_for(asked, 10)
                    assert [(r.url, r.error) for r in rounds] == [(relay.url, None)]
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            await store.close()
