"""History sync: job and buy history kept on the user's relays, replay-safe (ARCHITECTURE §6).

Every transition of a provider job, of one of our buy requests or of a wallet payment becomes
a history record
(nostr/history.py: NIP-44 to ourselves, NIP-70 protected, signed by our key), stored here
(store/sync.py) and published to the user's relays. A lost disk or a second daemon with the
same words gets the history back from those relays.

- **Capture.** After each domain event (and at start, over everything) the service looks at
  the jobs and buy requests that changed and records each step not recorded yet, by anyone.
- **Reconcile** (at start, when a relay connects, every `every_s`, and on `sync.now`): per
  relay, a NIP-77 negentropy round over our own records finds what each side lacks; what the
  relay lacks is uploaded, what we lack is fetched by id in chunks. A relay that refuses the
  whole range as too large is reconciled window by window, halving the time range until it
  answers; one that cannot reconcile at all is read whole and compared. Each relay's last
  round (have/need, uploaded, fetched, refused, round trips) is kept and shown.
- **Apply** is idempotent (by event id) and order-independent: what a job *is* is its
  furthest step among all its records, whatever the order they came in. Every chunk is
  committed on its own, so a crash in the middle of a round loses nothing the next round does
  not find again. An event from a relay that is not our record (another key, another kind,
  not decryptable, a bad shape) is counted as refused, never applied.

Records are history only: earnings stay the wallet's own settled payments (the earnings
table); a restored job is shown as restored and never credited. Owns the `sync` section.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autopilotd.blocking import in_daemon_thread
from autopilotd.config import split_list
from autopilotd.crashpoints import crash_point
from autopilotd.nostr.events import ShapeError, SignedEvent, parse_raw
from autopilotd.nostr.history import (
    KIND_HISTORY,
    HistoryRecord,
    RecordError,
    check_record,
    cut,
    open_record,
    seal,
)
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.ports.relays import (
    PublishOutcome,
    ReconcileRefused,
    RelayHealth,
    RelayPoolPort,
    SubscriptionFilter,
)
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import SyncSection, SyncState
from autopilotd.runtime.started import Started
from autopilotd.runtime.state import SectionWriter
from autopilotd.store.sync import RelaySync, StoredRecord, SyncEvents

logger = logging.getLogger(__name__)

RECONCILE_EVERY_S = 600.0
CAPTURE_SLACK_S = 5.0
"""Rows changed this long before the last capture are looked at again (a write committed late)."""
FETCH_CHUNK = 200
UPLOAD_CHUNK = 50
MIN_WINDOW_S = 60
FETCH_TIMEOUT_S = 10.0
FUTURE_SKEW_S = 3600
"""How far ahead of our clock a record's time may be and still be reconciled."""
QUIET_EVENTS = ("sync.", "relays.")
"""Domain events that never change a job, request or payment: no capture after them."""
EPOCH = 1_600_000_000
"""No history record is older (September 2020): where the time windows start."""


@dataclass
class _Round:
    """One relay's reconciliation as it goes."""

    url: str
    method: str = "negentropy"
    have: int = 0
    need: int = 0
    uploaded: int = 0
    fetched: int = 0
    refused: int = 0
    round_trips: int = 0

    def done(self, at: float, error: str | None = None) -> RelaySync:
        return RelaySync(
            self.url,
            at,
            self.method,
            self.have,
            self.need,
            self.uploaded,
            self.fetched,
            self.refused,
            self.round_trips,
            error,
        )


def _sound(record: HistoryRecord) -> bool:
    """Whether another daemon will accept this record (a row this one cannot sync is logged)."""
    try:
        check_record(record.to_json())
    except RecordError as exc:
        logger.warning("%s is not synced: %s", record.subject, exc)
        return False
    return True


class SyncService:
    name = "sync"

    def __init__(
        self,
        *,
        pool: RelayPoolPort,
        identity: NostrIdentity,
        records: SyncEvents,
        writer: SectionWriter[SyncSection],
        events: EventBus,
        config: LiveConfig,
        every_s: float = RECONCILE_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._identity = identity
        self._records = records
        self._writer = writer
        self._events = events
        self._config = config
        self._every_s = every_s
        self._clock = clock
        self._filter = SubscriptionFilter(kinds=(KIND_HISTORY,), authors=(identity.pubkey_hex,))
        self._watermark = 0.0
        self._last: dict[str, RelaySync] = {}
        self._connected: set[str] = set()
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one capture or reconciliation at a time
        self._started = Started("history sync")  # its relays known, its rounds loaded

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, ready: Callable[[], None]) -> None:
        pooled = set(self._pool.relays())  # a relay taken out while stopped is forgotten
        self._last = {r.url: r for r in await self._records.relays() if r.url in pooled}
        await self._records.keep_relays(list(self._last))
        await self.capture()
        await self._show()  # what is held, whether or not this start recorded anything
        self._connected = {
            h.url for h in self._pool.health() if h.connected and h.url in self._targets()
        }
        self._due = set(self._connected)
        unsubscribe = self._pool.on_health(self._on_health)
        unsubscribe_removed = self._pool.on_removed(self._on_removed)
        try:
            self._writer.set(state=SyncState.IDLE)
            self._started.set()
            ready()
            await self._loop()
        finally:
            self._started.clear()
            unsubscribe()
            unsubscribe_removed()

    async def _loop(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._capturing())
            tg.create_task(self._reconciling())

    async def _capturing(self) -> None:
        """Record new steps after each domain event (not our own, nor the relays' rows)."""
        seen = self._events.last_id
        while True:
            news, _ = await self._events.wait(seen, 3600.0, 1000)
            if news:
                seen = news[-1].id
            if any(not e.name.startswith(QUIET_EVENTS) for e in news):
                await self.capture()

    async def _reconciling(self) -> None:
        """Reconcile the relays due: at start, on connect, when asked, every `every_s`."""
        next_round = self._clock() + self._every_s
        while True:
            if self._clock() >= next_round:
                self._due |= self._connected
                next_round = self._clock() + self._every_s
            if self._due:
                due, self._due = sorted(self._due), set()
                await self.reconcile(due)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_round - self._clock())):
                    await self._wake.wait()
            self._wake.clear()
            if {row["url"] for row in self._writer.current.relays} != set(self._last):
                async with self._lock:  # a relay was taken out: forget its last round
                    await self._records.keep_relays(list(self._last))
                    await self._show()

    def _targets(self) -> tuple[str, ...]:
        """The user's own relays (`relays`): a Nexus's relay, which joins the pool by itself,
        is for starter jobs and keeps no one's history."""
        return split_list(self._config.current.relays)

    def _on_health(self, row: RelayHealth) -> None:
        if row.url not in self._targets():
            return
        if row.connected and row.url not in self._connected:
            self._connected.add(row.url)
            self._due.add(row.url)  # a relay that (re)connects is reconciled at once
            self._wake.set()
        elif not row.connected:
            self._connected.discard(row.url)

    def _on_removed(self, url: str) -> None:
        """A relay taken out of the pool (Settings): no more rounds with it; its last one is
        forgotten when the next round is shown."""
        self._connected.discard(url)
        self._due.discard(url)
        self._last.pop(url, None)
        self._wake.set()

    async def reconcile_now(self) -> list[RelaySync]:
        """One round with each connected relay, when asked. Asked while the service is still
        starting (which relays are connected is not known yet), it waits for the start rather
        than answer that there are none."""
        await self._started.wait()
        return await self.reconcile(sorted(self._connected))

    # -- capture -----------------------------------------------------------------------------

    async def capture(self) -> int:
        """Record each job or request step not recorded yet; publish the new records."""
        async with self._lock:
            started = time.time()
            made = await self._records_since(self._watermark)
            sealed = await in_daemon_thread(lambda: self._seal(made), name="sync-seal")
            if sealed:
                await self._records.add(sealed)
                await self._show()
            self._watermark = started - CAPTURE_SLACK_S
        await self._publish_all([s.raw for s in sealed])  # best effort: rounds make sure
        return len(sealed)

    async def _records_since(self, since: float) -> list[HistoryRecord]:
        out: list[HistoryRecord] = []
        for job in await self._records.changed_jobs(since):
            out.append(
                HistoryRecord(
                    "job",
                    job["request_id"],
                    job["stage"],
                    float(job["updated_at"]),
                    {
                        "source": job["source"],
                        "kind": job["kind"],
                        "buyer": job["buyer_pubkey"],
                        "price_msat": job["price_msat"],
                        "payment_hash": job["payment_hash"],
                        "reason": cut(job["reason"]),
                        "received_at": job["received_at"],
                        "paid_at": job["paid_at"],
                    },
                )
            )
        for buy in await self._records.changed_buys(since):
            out.append(
                HistoryRecord(
                    "buy",
                    buy["request_id"],
                    buy["status"],
                    float(buy["updated_at"]),
                    {
                        "kind": buy["kind"],
                        "prompt": cut(buy["prompt"]),
                        "budget_msat": buy["budget_msat"],
                        "provider": buy["provider"],
                        "result": cut(buy["result"]),
                        "payment_hash": buy["payment_hash"],
                        "reason": cut(buy["reason"]),
                        "created_at": buy["created_at"],
                    },
                )
            )
        for pay in await self._records.changed_payments(since):
            out.append(
                HistoryRecord(
                    f"pay_{pay['direction']}",
                    pay["payment_hash"],
                    pay["status"],
                    float(pay["updated_at"]),
                    {
                        "amount_msat": pay["amount_msat"],
                        "fee_msat": pay["fee_msat"],
                        "description": cut(pay["description"]),
                        "created_at": pay["created_at"],
                    },
                )
            )
        held = await self._records.steps([r.subject for r in out])
        return [r for r in out if (r.subject, r.step) not in held and _sound(r)]

    def _seal(self, made: Sequence[HistoryRecord]) -> list[StoredRecord]:
        """Encrypt and sign records (CPU: run off the event loop, 1 to 2 ms each)."""
        return [self._stored(seal(self._identity, r), r, "local") for r in made]

    @staticmethod
    def _stored(event: SignedEvent, record: HistoryRecord, origin: str) -> StoredRecord:
        return StoredRecord(
            event.id,
            event.created_at,
            record.subject,
            record.step,
            record.rank,
            record.at,
            record.to_json(),
            event.json,
            origin,
        )

    async def _publish(self, raw: str) -> dict[str, str | None]:
        """Publish one stored event; per relay, None if it now holds it, else why not."""
        event = parse_raw(raw)
        if isinstance(event, ShapeError):  # our own rows; never expected
            logger.error("a stored history record does not parse: %s", event.detail)
            return {}
        report = await self._pool.publish(event, self._targets())
        return {
            a.url: None
            if a.outcome == PublishOutcome.ACCEPTED or a.message.startswith("duplicate:")
            else (a.message or a.outcome.value)
            for a in report.answers
        }

    async def _publish_all(self, raws: Sequence[str]) -> list[dict[str, str | None]]:
        """Publish stored events, `UPLOAD_CHUNK` at a time. The first goes alone: a relay
        asks a writer of protected events to authenticate (NIP-42) once, and events sent
        together before that answer are all refused."""
        answers = [await self._publish(raws[0])] if raws else []
        for i in range(1, len(raws), UPLOAD_CHUNK):
            chunk = raws[i : i + UPLOAD_CHUNK]
            answers += await asyncio.gather(*(self._publish(raw) for raw in chunk))
        return answers

    # -- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, urls: Sequence[str]) -> list[RelaySync]:
        """One reconciliation with each relay in `urls`, one after another."""
        out = []
        async with self._lock:
            self._writer.set(state=SyncState.RECONCILING)
            try:
                for url in urls:
                    out.append(await self._reconcile_one(url))
            finally:
                self._writer.set(state=SyncState.IDLE)
                await self._show()
        return out

    async def _reconcile_one(self, url: str) -> RelaySync:
        r = _Round(url)
        error = None
        try:
            have, need = await self._diff(r)
            r.have, r.need = len(have), r.need + len(need)
            await self._fetch(r, need)
            await self._upload(r, have)
        except ReconcileRefused as exc:
            error = exc.reason
            logger.info("history sync with %s stopped: %s", url, exc.reason)
        row = r.done(self._clock(), error)
        self._last[url] = row
        await self._records.save_relay(row)
        self._events.publish("sync.reconciled", **row.to_json())
        return row

    async def _diff(self, r: _Round) -> tuple[list[str], list[str]]:
        """(ours the relay lacks, its ours-lack) over every record, however the relay allows."""
        hi = int(self._clock()) + FUTURE_SKEW_S
        try:
            return await self._window(r, EPOCH, hi, split=False)
        except ReconcileRefused as exc:
            if exc.too_large:
                r.method = "windows"
                return await self._window(r, EPOCH, hi, split=True)
            r.method = "fetch"
            return await self._by_fetch(r)

    async def _window(
        self, r: _Round, lo: int, hi: int, *, split: bool
    ) -> tuple[list[str], list[str]]:
        items = await self._records.items(lo, hi)
        r.round_trips += 1
        try:
            result = await self._pool.reconcile(r.url, self._filter.window(lo, hi), items)
        except ReconcileRefused as exc:
            if not split or not exc.too_large or hi - lo <= MIN_WINDOW_S:
                raise
            mid = lo + (hi - lo) // 2
            a = await self._window(r, lo, mid, split=True)
            b = await self._window(r, mid + 1, hi, split=True)
            return a[0] + b[0], a[1] + b[1]
        return list(result.have), list(result.need)

    async def _by_fetch(self, r: _Round) -> tuple[list[str], list[str]]:
        """For a relay without NIP-77: read everything it holds of ours and compare. Relays cap
        one answer (newest first), so it is read page by page, each ending where the last
        began, until a page brings nothing new."""
        theirs: set[str] = set()
        ours = {i for i, _ in await self._records.items()}
        until: int | None = None
        while True:
            r.round_trips += 1
            page = await self._pool.fetch(r.url, self._filter.window(None, until), FETCH_TIMEOUT_S)
            fresh = [e for e in page if e.id not in theirs]
            if not fresh:
                break
            theirs.update(e.id for e in fresh)
            missing = [e for e in fresh if e.id not in ours]
            r.need += len(missing)
            await self._apply(r, missing)
            until = min(e.created_at for e in page)  # that second again: ids already seen
        return sorted(ours - theirs), []

    async def _fetch(self, r: _Round, need: Sequence[str]) -> None:
        """Fetch what we lack by id, `FETCH_CHUNK` at a time; a relay that answers a chunk
        only in part (its own cap) is asked again for the rest while it brings something."""
        for i in range(0, len(need), FETCH_CHUNK):
            wanted = set(need[i : i + FETCH_CHUNK])
            while wanted:
                r.round_trips += 1
                f = SubscriptionFilter(
                    kinds=self._filter.kinds, authors=self._filter.authors, ids=tuple(wanted)
                )
                got = [
                    e for e in await self._pool.fetch(r.url, f, FETCH_TIMEOUT_S) if e.id in wanted
                ]
                if not got:
                    break  # the relay no longer has them: nothing to wait for
                wanted -= {e.id for e in got}
                await self._apply(r, got)

    async def _apply(self, r: _Round, events: Sequence[SignedEvent]) -> None:
        opened = await in_daemon_thread(lambda: self._open(events), name="sync-open")
        stored = []
        for event, record in opened:
            if isinstance(record, RecordError):
                r.refused += 1
                logger.warning("history event %s from %s refused: %s", event.id, r.url, record)
                continue
            stored.append(self._stored(event, record, "relay"))
        if stored:
            r.fetched += await self._records.add(stored)  # committed chunk by chunk
            crash_point("sync.after_fetch_chunk")

    def _open(
        self, events: Sequence[SignedEvent]
    ) -> list[tuple[SignedEvent, HistoryRecord | RecordError]]:
        """Decrypt and check events (CPU: run off the event loop)."""
        out: list[tuple[SignedEvent, HistoryRecord | RecordError]] = []
        for event in events:
            try:
                out.append((event, open_record(self._identity, event)))
            except RecordError as exc:
                out.append((event, exc))
        return out

    async def _upload(self, r: _Round, have: Sequence[str]) -> None:
        """Send the relay what it lacks; any it did not take is the round's problem (the next
        round finds them missing again)."""
        raws = await self._records.raw(have)
        r.round_trips += -(-len(raws) // UPLOAD_CHUNK)
        answers = [a.get(r.url, "not sent") for a in await self._publish_all(raws)]
        r.uploaded += sum(1 for a in answers if a is None)
        failed = [a for a in answers if a is not None]
        if failed:
            raise ReconcileRefused(r.url, f"{len(failed)} not uploaded: {failed[0]}")

    # -- what is shown -------------------------------------------------------------------------

    async def _show(self) -> None:
        records, restored = await self._records.count()
        self._writer.set(
            records=records,
            restored=restored,
            relays=tuple(self._last[url].to_json() for url in sorted(self._last)),
        )

    async def history(self, limit: int, kind: str | None) -> list[dict[str, Any]]:
        return await self._records.current(limit, kind)
