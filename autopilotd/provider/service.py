"""The provider service: intake, admission, the persisted job flow, settlement, presence.

Flow per job (result first, then invoice, then success):
    received → accepted (kind 7000 processing) → running (psionic) → delivered (result
    published to the relays, then the invoice in a kind 7000 payment-required) → paid when
    the wallet reports that invoice settled (kind 7000 success), or delivered_unpaid after
    the deadline.
Every event is signed once and kept in the outbox before it is published, so a crash
re-publishes the same event. Open jobs resume at start. Going online never happens by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import nostr_sdk as sdk

from autopilotd.config import Config, split_list
from autopilotd.crashpoints import crash_point
from autopilotd.errors import Conflict, UserError
from autopilotd.inference.port import InferenceError
from autopilotd.jobs.store import Job, JobStore, Purpose
from autopilotd.nostr.events import RawEvent
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.intake import IntakePolicy, RequestValidator
from autopilotd.nostr.nip90 import (
    KIND_EMBEDDINGS,
    KIND_TEXT_GENERATION,
    FeedbackStatus,
    JobRequest,
    build_feedback,
    build_handler,
    build_handler_deletion,
    build_result,
    embeddings_result,
)
from autopilotd.nostr.pool import RelayPool
from autopilotd.nostr.port import PoolConfig, PublishReport, RelayHealth, SubscriptionFilter
from autopilotd.nostr.reasons import Rejection
from autopilotd.runtime.context import Runtime
from autopilotd.runtime.snapshot import (
    Blocker,
    EarningsSection,
    ProviderSection,
    ProviderState,
    RelayRow,
)
from autopilotd.wallet.ledger import PaymentRow

logger = logging.getLogger(__name__)

HANDLER_D_TAG = "autopilotd"
KIND_FEEDBACK = 7000
SERVED = (KIND_TEXT_GENERATION, KIND_EMBEDDINGS)
MODEL_KIND = {KIND_TEXT_GENERATION: "chat", KIND_EMBEDDINGS: "embeddings"}
INBOX_ROWS = 20
TICK_S = 2.0
HEARTBEAT_S = 30.0
HANDLER_REFRESH_S = 600.0


def _outcomes(report: PublishReport) -> dict[str, str]:
    return {a.url: str(getattr(a.outcome, "value", a.outcome)) for a in report.answers}


class Provider:
    """The provider's state and its commands' logic; the service drives its loops."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.jobs = JobStore(rt.store)
        self.pool: RelayPool | None = None
        self.validator: RequestValidator | None = None
        self.want_online = False
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=rt.config.provider_queue_size)
        self._requests: dict[str, JobRequest] = {}
        self._previews: deque[dict[str, Any]] = deque(maxlen=INBOX_ROWS)
        self._settlements: asyncio.Queue[str] = asyncio.Queue()
        self._handler_ids: list[str] = []
        self._active: dict[str, str] = {}
        self._reached: set[int] | None = None  # milestones reached, once read after start
        self._running: set[str] = set()  # jobs started by dispatch and not ended
        self._prompts: dict[str, str] = {}  # request id → prompt, for the inbox
        self._capacity = asyncio.Condition()

    # -- identity and state ------------------------------------------------------------------

    @property
    def identity(self) -> NostrIdentity:
        identity = self.rt.identity
        if identity is None:
            raise UserError("no Nostr identity yet (the wallet seed is missing)")
        return identity

    def section(self) -> ProviderSection:
        return self.rt.state.current.provider

    def _publish_section(self, **changes: Any) -> None:
        old = self.section()
        new = dataclasses.replace(old, **changes)
        if new != old:
            self.rt.state.replace(provider=new)
            if new.state is not old.state:
                self.rt.events.publish(
                    "provider.mode_changed", state=new.state.value, reason=new.reason
                )

    def blockers(self) -> tuple[Blocker, ...]:
        """What keeps the provider from earning now, each with what to do."""
        s = self.rt.state.current
        out: list[Blocker] = []
        if self.rt.identity is None:
            out.append(Blocker("identity", "no Nostr identity", "restart autopilotd"))
        if s.wallet.state.value != "ready":
            out.append(
                Blocker(
                    "wallet",
                    f"the wallet is {s.wallet.state.value}: {s.wallet.reason}",
                    s.wallet.next_step or "wait until the wallet is ready",
                )
            )
        if not any(s.local_runtime.has_model(MODEL_KIND[k]) for k in SERVED):
            out.append(
                Blocker(
                    "model",
                    f"no model ready ({s.local_runtime.state.value}: {s.local_runtime.reason})",
                    s.local_runtime.next_step or "wait for psionic to load its models",
                )
            )
        if not split_list(self.rt.config.relays):
            out.append(
                Blocker("relays", "no relays configured", "add a relay in Relay Connections")
            )
        elif not any(r.connected for r in s.relays):
            out.append(
                Blocker("relays", "no relay is connected", "check the relays in Relay Connections")
            )
        return tuple(out)

    def refresh_state(self) -> None:
        """Recompute blockers and the online state from the snapshot (one place)."""
        blockers = self.blockers()
        section = self.section()
        if not self.want_online:
            state = ProviderState.OFFLINE
            reason = "offline: requests are shown as previews only"
        elif blockers:
            state = ProviderState.DEGRADED if section.online_since else ProviderState.CONNECTING
            reason = "not earning: " + "; ".join(b.reason for b in blockers)
        else:
            state = ProviderState.ONLINE
            reason = "online: accepting jobs"
        online_since = section.online_since if self.want_online else None
        if state is ProviderState.ONLINE and online_since is None:
            online_since = time.time()
        self._publish_section(
            state=state, reason=reason, blockers=blockers, online_since=online_since
        )

    def accepting(self) -> bool:
        return self.section().state is ProviderState.ONLINE

    async def go_online(self) -> dict[str, Any]:
        blockers = self.blockers()
        if blockers:
            self.refresh_state()
            raise UserError(
                "cannot go online: " + "; ".join(f"{b.reason} ({b.next_step})" for b in blockers),
                data={"blockers": [dataclasses.asdict(b) for b in blockers]},
            )
        self.want_online = True
        self.refresh_state()
        await self._announce()
        return {"state": self.section().state.value}

    async def go_offline(self) -> dict[str, Any]:
        was = self.want_online
        self.want_online = False
        self.refresh_state()
        if was and self.pool is not None and self._handler_ids:
            deletion = build_handler_deletion(
                self.identity, d_tag=HANDLER_D_TAG, handler_event_ids=self._handler_ids
            )
            await self.pool.publish(deletion)
            self._handler_ids.clear()
        return {"state": self.section().state.value, "active_jobs": len(self._active)}

    async def _announce(self) -> None:
        """Publish (or refresh) the NIP-89 handler for the served kinds."""
        if self.pool is None:
            return
        event = build_handler(
            self.identity,
            SERVED,
            d_tag=HANDLER_D_TAG,
            metadata={
                "name": "autopilotd",
                "about": "local compute, paid over Lightning",
                "price_sats": self.rt.config.provider_price_sats,
            },
        )
        report = await self.pool.publish(event)
        if report.any_accepted:
            self._handler_ids = [event.id().to_hex()]

    # -- relays ----------------------------------------------------------------------------

    def on_health(self, row: RelayHealth) -> None:
        shown = {f.name: getattr(row, f.name) for f in dataclasses.fields(RelayRow)}
        new_row = RelayRow(**{**shown, "state": str(row.state)})  # LinkState is a StrEnum
        rows = {r.url: r for r in self.rt.state.current.relays}
        old = rows.get(row.url)
        only_seen = (
            old is not None and dataclasses.replace(old, last_seen=new_row.last_seen) == new_row
        )
        if only_seen and old is not None and (new_row.last_seen or 0) - (old.last_seen or 0) < 5:
            return  # debounce: last_seen alone changes on every event
        rows[row.url] = new_row
        self.rt.state.replace(relays=tuple(rows[u] for u in sorted(rows)))

    def on_relay_removed(self, url: str) -> None:
        """The pool stopped using `url`: its row leaves the snapshot."""
        relays = tuple(r for r in self.rt.state.current.relays if r.url != url)
        if relays != self.rt.state.current.relays:
            self.rt.state.replace(relays=relays)
        self.refresh_state()

    async def apply_config(self, old: Config, new: Config) -> None:
        """Settings saved while running: the price, max in-flight and the relays apply at once."""
        if new.provider_max_inflight != old.provider_max_inflight:
            self._publish_section(max_inflight=new.provider_max_inflight)
            await self.capacity_changed()
        if new.provider_price_sats != old.provider_price_sats:
            if self.validator is not None:
                self.validator.policy = dataclasses.replace(
                    self.validator.policy, min_bid_msat=new.provider_price_sats * 1000
                )
            self._publish_section(price_sats=new.provider_price_sats)
            if self.want_online:
                await self._announce()  # the handler's metadata names the price
        if new.relays != old.relays:
            if self.pool is not None:
                await self.pool.set_relays(split_list(new.relays))
            self.refresh_state()

    # -- intake ----------------------------------------------------------------------------

    async def intake(self, pool: RelayPool) -> None:
        assert self.validator is not None
        async for incoming in pool.events():
            if incoming.event.kind == KIND_FEEDBACK:
                await self.on_feedback(incoming.event)
                continue
            outcome = self.validator.validate(incoming.event)
            if isinstance(outcome, Rejection):
                self._publish_jobs()
                continue
            await self.admit(outcome)

    async def on_feedback(self, event: RawEvent) -> None:
        """A buyer telling us another provider won its request: our job ends unpaid, visibly.

        Only the job's own buyer can say so (the pool checked the signature); the job must be
        delivered and unpaid. Anything else is ignored.
        """
        status = event.first("status")
        if status is None or len(status) < 3 or status[1] != "error" or status[2] != "lost-race":
            return
        for tag in event.all("e"):
            job = await self.jobs.get(tag[1]) if len(tag) > 1 else None
            if job is None or job.buyer_pubkey != event.pubkey or job.stage != "delivered":
                continue
            await self.jobs.advance(
                job.request_id,
                "delivered_unpaid",
                reason="lost the race: the buyer paid another provider",
            )
            self.rt.events.publish("provider.lost_race", request_id=job.request_id)
            self.rt.events.publish(
                "provider.delivered_unpaid", request_id=job.request_id, reason="lost-race"
            )
            await self._publish_jobs_async()

    async def admit(self, request: JobRequest) -> None:
        if request.pubkey == self.identity.pubkey_hex:
            return  # our own request as a buyer: not a job for us, not even a preview
        row = {
            "request_id": request.id,
            "kind": request.kind,
            "buyer": request.pubkey,
            "bid_sats": request.bid_msat // 1000,
            "prompt": (request.prompt or "")[:200],
            "received_at": time.time(),
        }
        self.rt.events.publish(
            "provider.request_received", request_id=request.id, kind=request.kind
        )
        if not self.accepting():
            self._previews.appendleft({**row, "stage": "preview", "claimable": False})
            self._publish_jobs()
            return
        if self._queue.full():
            self.validator_count("busy")
            return
        price_msat = self.rt.config.provider_price_sats * 1000
        _, new = await self.jobs.receive(
            request_id=request.id,
            buyer_pubkey=request.pubkey,
            kind=request.kind,
            request_json=request.json,
            price_msat=price_msat,
        )
        if not new:
            return
        self._requests[request.id] = request
        self._queue.put_nowait(request.id)
        await self._publish_jobs_async()

    def validator_count(self, reason: str) -> None:
        counts = dict(self.rt.state.current.jobs.rejections)
        counts[reason] = counts.get(reason, 0) + 1
        self.rt.state.replace(
            jobs=dataclasses.replace(self.rt.state.current.jobs, rejections=counts)
        )

    # -- the job flow ----------------------------------------------------------------------

    def _request(self, job: Job) -> JobRequest:
        request = self._requests.get(job.request_id)
        if request is None:
            request = self._requests[job.request_id] = self._reparse(job)
        return request

    def _reparse(self, job: Job) -> JobRequest:
        # A request stored earlier is parsed again as of when it arrived, by a validator of its
        # own, so resuming never touches the live counters or the buyers' rate limits.
        reloader = RequestValidator(
            self.identity, IntakePolicy(min_bid_msat=0, buyer_burst=1 << 30, max_tokens_cap=1 << 30)
        )
        parsed = reloader.validate(job.request_json, now=job.received_at)
        if isinstance(parsed, Rejection):
            raise Conflict(f"stored request {job.request_id} no longer parses: {parsed.reason}")
        return parsed

    def _prompt(self, job: Job) -> str:
        """What the buyer asked, for the inbox (parsed once per job, a bounded cache)."""
        prompt = self._prompts.get(job.request_id)
        if prompt is None:
            request = self._requests.get(job.request_id)
            try:
                prompt = ((request or self._reparse(job)).prompt or "")[:200]
            except Conflict:
                prompt = ""
            self._prompts[job.request_id] = prompt
            while len(self._prompts) > 4 * INBOX_ROWS:
                self._prompts.pop(next(iter(self._prompts)))
        return prompt

    async def _send(self, job: Job, purpose: Purpose, make: Callable[[], sdk.Event]) -> bool:
        """Sign once (or reuse the stored event), publish to every relay, record each answer."""
        item = await self.jobs.outbox_item(job.request_id, purpose)
        if item is None:
            event = make()
            item = await self.jobs.stage_event(
                job.request_id, purpose, event.id().to_hex(), event.as_json()
            )
        assert self.pool is not None
        report = await self.pool.publish(sdk.Event.from_json(item.event_json))
        accepted = await self.jobs.record_publish(item.id, _outcomes(report))
        return accepted > 0

    async def _parts_ready(self, timeout: float = 300.0) -> bool:
        """Wait until the wallet and a model are ready (after a restart, resumed jobs wait)."""
        snapshot = self.rt.state.current
        deadline = time.monotonic() + timeout
        while any(b.id in ("wallet", "model") for b in self.blockers()):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            snapshot = await self.rt.state.wait_for_change(snapshot.seq, min(left, 5.0))
        return True

    async def dispatch(self, tg: asyncio.TaskGroup) -> None:
        """Start queued jobs in `tg`, at most `provider_max_inflight` at once.

        The limit is read for every job, so a changed setting counts from the next job; a
        lowered one lets running jobs finish.
        """
        while True:
            request_id = await self._queue.get()
            async with self._capacity:
                await self._capacity.wait_for(
                    lambda: len(self._running) < self.rt.config.provider_max_inflight
                )
                self._running.add(request_id)
            tg.create_task(self._work(request_id))

    async def capacity_changed(self) -> None:
        async with self._capacity:
            self._capacity.notify_all()

    async def _work(self, request_id: str) -> None:
        try:
            await self.work(request_id)
        finally:
            async with self._capacity:
                self._running.discard(request_id)
                self._capacity.notify_all()

    async def work(self, request_id: str) -> None:
        """Run one accepted job to its end, whatever happens on the way."""
        if not await self._parts_ready():
            job = await self.jobs.get(request_id)
            if job is not None and job.stage in ("received", "accepted", "running"):
                await self.jobs.advance(
                    request_id, "failed", reason="the wallet or the model did not get ready"
                )
            return
        self._active[request_id] = "accepted"
        try:
            await self.run_job(request_id)
        except Exception:
            logger.exception("job %s failed unexpectedly", request_id)
            job = await self.jobs.get(request_id)
            if job is not None and job.stage in ("received", "accepted", "running"):
                await self.jobs.advance(request_id, "failed", reason="internal error")
        finally:
            self._active.pop(request_id, None)
            self._requests.pop(request_id, None)
            await self._publish_jobs_async()

    async def run_job(self, request_id: str) -> None:
        job = await self.jobs.get(request_id)
        if job is None:
            return
        request = self._request(job)
        rid = job.request_id
        if job.stage == "received":
            job = await self.jobs.advance(rid, "accepted")
            self.rt.events.publish("provider.accepted", request_id=rid, kind=job.kind)
            crash_point("job.after_accept")
        if job.stage == "accepted":
            await self._send(
                job,
                "processing",
                lambda: build_feedback(self.identity, request, FeedbackStatus.PROCESSING),
            )
            job = await self.jobs.advance(rid, "running")
            self._active[rid] = "running"
            self.rt.events.publish("provider.running", request_id=rid)
            await self._publish_jobs_async()
        if job.stage == "running":
            result = await self.jobs.outbox_item(rid, "result")
            if result is None:
                try:
                    content = await self._execute(request)
                except InferenceError as exc:
                    await self._fail(job, request, f"inference failed: {exc.reason}")
                    return
                make = lambda: build_result(  # noqa: E731 - signed once, inside _send
                    self.identity, request, content, amount_msat=job.price_msat
                )
            else:
                make = lambda: sdk.Event.from_json(result.event_json)  # noqa: E731
            published = await self._send(job, "result", make)
            if not published:
                await self._fail(job, request, "no relay accepted the result")
                return
            self.rt.events.publish("provider.result_published", request_id=rid)
            crash_point("job.after_result_published")
            invoice = await self.rt.wallet.receive(
                job.price_msat // 1000,
                f"autopilotd job {rid[:16]}",
                int(self.rt.config.provider_payment_timeout_s) + 60,
            )
            job = await self.jobs.advance(
                rid,
                "delivered",
                payment_hash=invoice["payment_hash"],
                bolt11=invoice["bolt11"],
                pay_deadline_at=time.time() + self.rt.config.provider_payment_timeout_s,
            )
            self._active[rid] = "delivered"
        if job.stage == "delivered" and job.bolt11:
            bolt11 = job.bolt11
            await self._send(
                job,
                "payment_required",
                lambda: build_feedback(
                    self.identity,
                    request,
                    FeedbackStatus.PAYMENT_REQUIRED,
                    amount_msat=job.price_msat,
                    bolt11=bolt11,
                ),
            )
            self.rt.events.publish(
                "provider.payment_requested", request_id=rid, payment_hash=job.payment_hash
            )
            crash_point("job.after_invoice_published")
            if job.payment_hash:
                await self._settlements.put(job.payment_hash)  # it may have settled already

    async def _execute(self, request: JobRequest) -> str:
        runtime = self.rt.local_runtime.require()
        if request.kind == KIND_EMBEDDINGS:
            texts = [i.data for i in request.inputs if i.type == "text"]
            vectors = await runtime.embed(texts, model=request.model)
            return embeddings_result(vectors, request.model or "default")
        completion = await runtime.chat(
            [{"role": "user", "content": request.prompt or ""}],
            model=request.model or self.rt.config.provider_model or None,
            max_tokens=min(request.max_tokens or 128, self.rt.config.provider_max_tokens),
            temperature=request.temperature if request.temperature is not None else 0.7,
            top_p=request.top_p if request.top_p is not None else 1.0,
        )
        return completion.text

    async def _fail(self, job: Job, request: JobRequest, reason: str) -> None:
        await self.jobs.advance(job.request_id, "failed", reason=reason)
        self.rt.events.publish("provider.failed", request_id=job.request_id, reason=reason)
        await self._send(
            job,
            "error",
            lambda: build_feedback(self.identity, request, FeedbackStatus.ERROR, extra=reason),
        )

    # -- settlement and deadlines ------------------------------------------------------------

    def on_wallet_receipt(self, row: PaymentRow) -> None:
        """Wallet listener: a settled inbound payment (the only proof of payment there is)."""
        self._settlements.put_nowait(row.payment_hash)

    async def settle(self) -> None:
        while True:
            payment_hash = await self._settlements.get()
            crash_point("job.after_settlement_before_credit")
            job, credited = await self.jobs.credit(payment_hash)
            if job is None or not credited:
                continue
            self.rt.events.publish(
                "provider.settlement_confirmed",
                request_id=job.request_id,
                payment_hash=payment_hash,
                amount_sats=job.price_msat // 1000,
            )
            await self._publish_jobs_async()  # the scoreboard first, then the network
            await self._announce_success(job)

    async def _announce_success(self, job: Job) -> None:
        try:
            request = self._request(job)
        except Conflict as exc:
            logger.warning("success feedback for %s: %s", job.request_id, exc.message)
            return
        await self._send(
            job, "success", lambda: build_feedback(self.identity, request, FeedbackStatus.SUCCESS)
        )

    async def tick(self) -> None:
        """Deadlines, outbox retries, heartbeat and handler refresh, every few seconds."""
        last_handler = 0.0
        while True:
            now = time.time()
            for job in await self.jobs.overdue(now):
                await self.jobs.advance(
                    job.request_id, "delivered_unpaid", reason="not paid in time"
                )
                self.rt.events.publish("provider.delivered_unpaid", request_id=job.request_id)
            for item in await self.jobs.unpublished():
                if self.pool is not None:
                    report = await self.pool.publish(sdk.Event.from_json(item.event_json))
                    await self.jobs.record_publish(item.id, _outcomes(report))
            self.refresh_state()
            if self.accepting():
                self._publish_section(heartbeat_at=now)
                if now - last_handler > HANDLER_REFRESH_S:
                    await self._announce()
                    last_handler = now
            await self._publish_jobs_async()
            await asyncio.sleep(TICK_S)

    async def resume(self) -> None:
        """Continue open jobs after a restart (M10) and credit payments that settled meanwhile."""
        for job in await self.jobs.open_jobs():
            if job.stage in ("received", "accepted", "running"):
                await self._queue.put(job.request_id)
            elif job.stage == "delivered" and job.payment_hash:
                await self._settlements.put(job.payment_hash)
        for job in await self.jobs.paid_without_success():
            await self._announce_success(job)

    # -- snapshot ----------------------------------------------------------------------------

    def _publish_jobs(self) -> None:
        assert self.validator is not None
        counts = {k: v for k, v in self.validator.counters.snapshot().items() if v}
        busy = self.rt.state.current.jobs.rejections.get("busy")
        if busy:
            counts["busy"] = busy
        jobs = dataclasses.replace(
            self.rt.state.current.jobs, rejections=counts, queue_depth=self._queue.qsize()
        )
        if jobs != self.rt.state.current.jobs:
            self.rt.state.replace(jobs=jobs)

    async def refresh(self) -> None:
        """Publish the jobs and earnings sections again (a command changed what they show)."""
        if self.validator is not None:  # else the provider service has not started
            await self._publish_jobs_async()

    async def _publish_jobs_async(self) -> None:
        recent = await self.jobs.history(limit=INBOX_ROWS, before=None)
        rows = [
            {
                **j.to_json(),
                "prompt": self._prompt(j),
                "claimable": False,
                "active_stage": self._active.get(j.request_id),
            }
            for j in recent
        ]
        inbox = tuple(
            sorted([*rows, *self._previews], key=lambda r: -float(r.get("received_at", 0)))[
                :INBOX_ROWS
            ]
        )
        active = tuple(
            r for r in rows if r["stage"] in ("received", "accepted", "running", "delivered")
        )
        self._publish_jobs()
        jobs = dataclasses.replace(self.rt.state.current.jobs, inbox=inbox, active=active)
        day_start = time.time() - (time.time() % 86400)
        summary = await self.jobs.earnings_summary(day_start)
        last = recent[0] if recent else None
        earnings = EarningsSection(
            sats_today=summary["sats_today"],
            lifetime_sats=summary["lifetime_sats"],
            jobs_today=summary["jobs_today"],
            lifetime_jobs=summary["lifetime_jobs"],
            last_job=None
            if last is None
            else {"request_id": last.request_id, "stage": last.stage, "reason": last.reason},
            last_payment=summary["last_payment"],
            series=tuple((at, int(sats)) for at, sats in summary["series"]),
            milestones=tuple(summary["milestones"]),
            celebrate=next(
                (
                    m["sats"]
                    for m in summary["milestones"]
                    if m["reached_at"] and not m["celebrated"]
                ),
                None,
            ),
        )
        current = self.rt.state.current
        reached = {m["sats"] for m in summary["milestones"] if m["reached_at"]}
        for sats in sorted(reached - self._reached) if self._reached is not None else ():
            self.rt.events.publish("earnings.milestone_reached", sats=sats)
        self._reached = reached
        if current.jobs != jobs or current.earnings != earnings:
            self.rt.state.replace(jobs=jobs, earnings=earnings)


class ProviderService:
    name = "provider"

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    async def run(self, ready: Callable[[], None]) -> None:
        p = self.provider
        cfg = p.rt.config
        p.validator = RequestValidator(
            p.identity,
            IntakePolicy(min_bid_msat=cfg.provider_price_sats * 1000, max_tokens_cap=1_000_000),
        )
        p._publish_section(
            npub=p.identity.public().npub,
            served_kinds=SERVED,
            price_sats=cfg.provider_price_sats,
            max_inflight=cfg.provider_max_inflight,
        )
        p.rt.wallet.receive_listeners.append(p.on_wallet_receipt)
        pool = RelayPool(
            PoolConfig(relays=split_list(cfg.relays)),
            on_health=p.on_health,
            on_removed=p.on_relay_removed,
        )
        p.pool = pool
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pool.run())
                await pool.subscribe(
                    [
                        SubscriptionFilter(kinds=SERVED, since=int(time.time()) - 600),
                        SubscriptionFilter(
                            kinds=(KIND_FEEDBACK,),
                            p=(p.identity.pubkey_hex,),
                            since=int(time.time()) - 600,
                        ),
                    ]
                )
                ready()
                await p.resume()
                tg.create_task(p.intake(pool))
                tg.create_task(p.settle())
                tg.create_task(p.tick())
                tg.create_task(p.dispatch(tg))
        finally:
            p.pool = None
            p.rt.wallet.receive_listeners.remove(p.on_wallet_receipt)
