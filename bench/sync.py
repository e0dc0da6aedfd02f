"""History sync on a local relay: catch-up of a whole history, and a round when 1 % differs.

    .venv/bin/python bench/sync.py [--events 10000] [--runs 3]

Everything real but the records' contents: nostr-sdk's LocalRelay (`local_relay()`), the
daemon's RelayPool (NIP-42 AUTH, NIP-70 protected events) and SyncService over SQLite stores.
Set-up (not timed, its time printed): daemon A's store gets N history records (job records,
sealed: NIP-44 to self, signed) and A's own reconciliation uploads them to the relay.

1. **Catch-up.** A fresh daemon B with the same key and an empty store runs one
   `SyncService.reconcile([relay])` (its `run` loop is not started, so no round of its own
   gets in the way): one NIP-77 negentropy round, then the N events fetched by id in chunks of
   `FETCH_CHUNK`. Prints seconds, events/s and round trips.
2. **1 % differs.** B holds the N; 1 % more (N / 100) records are made on A and uploaded, so
   only the relay and A have them. B's round: seconds, have/need, round trips. The baseline, in
   the same run and from the same state: the round without negentropy, as the service runs it
   against a relay that refuses NEG-OPEN (method `fetch`: read all our records from the relay
   and compare). Between runs B forgets the new records again.

Once, untimed, both 1 % rounds also go through a websocket proxy that counts the bytes each way
(the relay's frames as text), for what each method costs on the wire.

Client, relay and stores share the machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import ClientSession, WSMsgType, web

from autopilotd.adapters.local_relay import local_relay
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool, running
from autopilotd.config import Config
from autopilotd.nostr.events import SignedEvent, parse_raw
from autopilotd.nostr.history import HistoryRecord, seal
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.paths import Paths
from autopilotd.runtime.clock import SystemClock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import DaemonSection
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import StateStore
from autopilotd.store import Store
from autopilotd.store.sync import RelaySync, SyncEvents
from autopilotd.sync import service as sync_service
from autopilotd.sync.service import SyncService

DAY_S = 86_400


@dataclass
class Daemon:
    """One daemon's sync: its store and its service, over a running pool (no `run` loop)."""

    store: Store
    pool: RelayPool
    sync: SyncService

    async def count(self) -> int:
        row = await self.store.fetchone("SELECT COUNT(*) FROM sync_events")
        assert row is not None
        return int(row[0])


@contextlib.asynccontextmanager
async def daemon(
    home: Path, identity: NostrIdentity, relays: tuple[str, ...]
) -> AsyncIterator[Daemon]:
    home.mkdir(parents=True, exist_ok=True)
    store = await Store.open(home / "db.sqlite")
    events = EventBus()
    state = StateStore(
        Snapshot(
            seq=0,
            daemon=DaemonSection(version="b", pid=1, started_at=0.0, home="h", session_id="s"),
        ),
        events,
        SystemClock(),
    )
    pool = RelayPool(PoolConfig(relays=relays, backoff_initial_s=0.1), identity=identity)
    sync = SyncService(
        pool=pool,
        identity=identity,
        records=SyncEvents(store),
        writer=state.writer("sync"),
        events=events,
        config=LiveConfig(Config(paths=Paths.for_home(home), relays=", ".join(relays))),
    )
    try:
        async with running(pool):
            deadline = time.monotonic() + 10
            while not all(h.connected for h in pool.health()):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{home.name}: the relay did not connect")
                await asyncio.sleep(0.02)
            yield Daemon(store, pool, sync)
    finally:
        await store.close()


def records(n: int, now: float) -> list[HistoryRecord]:
    """N paid-job records, one a job, spread over the last 90 days."""
    out = []
    for i in range(n):
        at = now - 90 * DAY_S + (i + 0.5) * (90 * DAY_S / n)
        out.append(
            HistoryRecord(
                "job",
                secrets.token_hex(32),
                "paid",
                round(at, 3),
                {
                    "source": "open",
                    "kind": 5050,
                    "buyer": "b" * 64,
                    "price_msat": 10_000,
                    "payment_hash": secrets.token_hex(32),
                    "reason": None,
                    "received_at": at - 3,
                    "paid_at": at,
                },
            )
        )
    return out


async def hold(d: Daemon, identity: NostrIdentity, made: list[HistoryRecord]) -> list[str]:
    """Seal `made` and store them as A's own records; their event ids."""
    stored = [SyncService._stored(seal(identity, r), r, "local") for r in made]
    for i in range(0, len(stored), 1000):
        await SyncEvents(d.store).add(stored[i : i + 1000])
    return [s.event_id for s in stored]


async def service_fallback(d: Daemon, url: str) -> RelaySync:
    """What `_reconcile_one` does after a relay refused NEG-OPEN (method `fetch`), without the
    refusal's own round trip: read all our records page by page, compare, apply, upload."""
    r = sync_service._Round(url, method="fetch")
    have, need = await d.sync._by_fetch(r)
    r.have, r.need = len(have), r.need + len(need)
    await d.sync._upload(r, have)
    return r.done(time.time())


async def read_all_paged(d: Daemon, url: str) -> RelaySync:
    """The baseline: read every record of ours the relay holds, newest first, page by page
    (`until` = the oldest `created_at` seen, as far as the relay's per-REQ cap allows), then
    compare with ours, apply what is new and upload what the relay lacks."""
    r = sync_service._Round(url, method="read all (paged)")
    svc = d.sync
    theirs: dict[str, SignedEvent] = {}
    until = int(time.time()) + sync_service.FUTURE_SKEW_S
    while True:
        r.round_trips += 1
        f = svc._filter.window(sync_service.EPOCH, until)
        page = await d.pool.fetch(url, f, sync_service.FETCH_TIMEOUT_S)
        fresh = [e for e in page if e.id not in theirs]
        if not fresh:
            break
        theirs.update((e.id, e) for e in fresh)
        until = min(e.created_at for e in fresh)
    ours = {i for i, _ in await svc._records.items()}
    have = sorted(ours - theirs.keys())
    await svc._apply(r, [e for i, e in theirs.items() if i not in ours])
    r.have, r.need = len(have), len(theirs.keys() - ours)
    await svc._upload(r, have)
    return r.done(time.time())


async def forget(d: Daemon, ids: list[str]) -> None:
    async with d.store.write() as tx:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            await tx.execute(f"DELETE FROM sync_events WHERE event_id IN ({marks})", chunk)


@dataclass
class Wire:
    up: int = 0  # bytes client → relay
    down: int = 0  # bytes relay → client
    frames: int = 0


@contextlib.asynccontextmanager
async def counting_proxy(upstream: str, wire: Wire) -> AsyncIterator[str]:
    """A websocket proxy in front of the relay that counts the text frames' bytes each way."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async with ClientSession() as http, http.ws_connect(upstream, max_msg_size=0) as up:

            async def down() -> None:
                async for msg in up:
                    if msg.type == WSMsgType.TEXT:
                        wire.down += len(msg.data.encode())
                        wire.frames += 1
                        await ws.send_str(msg.data)

            async with asyncio.TaskGroup() as tg:
                pump = tg.create_task(down())
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT:
                        wire.up += len(msg.data.encode())
                        wire.frames += 1
                        await up.send_str(msg.data)
                pump.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def show(name: str, row: RelaySync, seconds: float) -> None:
    print(
        f"  {name}: {seconds:.3f} s, method {row.method}, have {row.have}, need {row.need}, "
        f"fetched {row.fetched}, uploaded {row.uploaded}, refused {row.refused}, "
        f"round trips {row.round_trips}" + (f", error {row.error}" if row.error else "")
    )


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


async def authenticate(d: Daemon, identity: NostrIdentity) -> None:
    """Publish one record on its own first: the link authenticates (NIP-42) on it. Fifty
    protected events published at once on a link not yet authenticated all fail with
    "authentication failed" (see docs/benchmarks.md), and so would A's whole upload."""
    (raw,) = await SyncEvents(d.store).raw(await hold(d, identity, records(1, time.time() - DAY_S)))
    parsed = parse_raw(raw)
    assert isinstance(parsed, SignedEvent)
    report = await d.pool.publish(parsed)
    assert report.any_accepted, report


async def bench(n: int, runs: int) -> None:
    me = generate_identity()
    extra = max(1, n // 100)
    root = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    now = time.time()
    print(f"{n:,} history records, {extra:,} more for the 1 % round; {runs} run(s)")
    async with local_relay() as relay:
        url = relay.url
        async with daemon(root / "a", me, (url,)) as a:
            await authenticate(a, me)
            n_all = n + 1  # with the record that authenticated A
            t0 = time.perf_counter()
            await hold(a, me, records(n, now - 2 * DAY_S))
            sealed_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            (up,) = await a.sync.reconcile([url])
            upload_s = time.perf_counter() - t0
            print(
                f"set-up (untimed): sealed and stored {n:,} records in {sealed_s:.1f} s; "
                f"A uploaded {up.uploaded:,} in {upload_s:.1f} s ({up.round_trips} round trips)"
            )
            if up.uploaded != n:
                last = a.pool.health()[0].last_error
                print(
                    f"  NOTE: only {up.uploaded:,} of {n:,} reached the relay (last error: {last})"
                )

            # 1. catch-up: a fresh B each run (an empty store)
            print("\n1. catch-up into an empty store (B: same key, empty store, one round)")
            times, trips = [], []
            for k in range(runs):
                async with daemon(root / f"b{k}", me, (url,)) as b:
                    t0 = time.perf_counter()
                    (row,) = await b.sync.reconcile([url])
                    s = time.perf_counter() - t0
                    show(f"run {k + 1}", row, s)
                    held = await b.count()
                    if held != n_all:
                        print(f"  NOTE: B holds {held:,} records, not {n_all:,}")
                    times.append(s)
                    trips.append(row.round_trips)
            cs = median(times)
            print(
                f"  median {cs:.3f} s, {n_all / cs:,.0f} events/s, {median(trips):.0f} round trips"
            )

            # 2. 1 % differs: new records only on A and the relay
            print(f"\n2. {extra:,} new records ({extra / n:.0%}) only on the relay; B's round")
            b_home = root / "b0"  # holds them all after run 1
            new_ids = await hold(a, me, records(extra, now - DAY_S))
            (up,) = await a.sync.reconcile([url])
            print(f"  (A uploaded {up.uploaded:,} new in {up.round_trips} round trips)")
            neg_t, neg_rt, all_t, all_rt = [], [], [], []
            async with daemon(b_home, me, (url,)) as b:
                for k in range(runs):
                    await forget(b, new_ids)
                    t0 = time.perf_counter()
                    (row,) = await b.sync.reconcile([url])
                    s = time.perf_counter() - t0
                    show(f"run {k + 1} negentropy", row, s)
                    neg_t.append(s)
                    neg_rt.append(row.round_trips)
                    await forget(b, new_ids)
                    t0 = time.perf_counter()
                    row = await read_all_paged(b, url)
                    s = time.perf_counter() - t0
                    show(f"run {k + 1} baseline: read all, paged", row, s)
                    all_t.append(s)
                    all_rt.append(row.round_trips)
                    if await b.count() != n_all + extra:
                        print(f"  NOTE: B holds {await b.count():,}, not {n_all + extra:,}")
                print(
                    f"  median: negentropy {median(neg_t):.3f} s "
                    f"({median(neg_rt):.0f} round trips), baseline {median(all_t):.3f} s "
                    f"({median(all_rt):.0f} round trips): {median(all_t) / median(neg_t):.1f}x"
                )

                # the service's own fallback (method `fetch`), once: paged like the baseline
                await forget(b, new_ids)
                t0 = time.perf_counter()
                row = await service_fallback(b, url)
                s = time.perf_counter() - t0
                show("the service's fallback (paged, once)", row, s)
                if row.fetched != extra or row.have:
                    print(
                        f"  NOTE: the fallback missed some: it "
                        f"fetched {row.fetched:,} of {extra:,} new, took {row.have:,} records "
                        f"the relay holds for missing and sent them again"
                    )

            # bytes on the wire, once, through a counting proxy (not timed)
            print("\nbytes on the wire for the 1 % round (through a counting proxy, untimed)")
            for name in ("negentropy", "baseline: read all, paged"):
                wire = Wire()
                async with (
                    counting_proxy(url, wire) as proxy,
                    daemon(b_home, me, (proxy,)) as b,
                ):
                    await forget(b, new_ids)
                    before = Wire(wire.up, wire.down, wire.frames)  # AUTH and connect
                    if name == "negentropy":
                        (row,) = await b.sync.reconcile([proxy])
                    else:
                        row = await read_all_paged(b, proxy)
                    print(
                        f"  {name}: {(wire.up - before.up) / 1024:,.1f} KiB up, "
                        f"{(wire.down - before.down) / 1024:,.1f} KiB down, "
                        f"{wire.frames - before.frames:,} frames; fetched {row.fetched:,}"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="history records (N)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each round")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(bench(args.events, args.runs))


if __name__ == "__main__":
    main()
