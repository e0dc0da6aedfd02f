"""Starter demand: the provider's side of a Nexus (ARCHITECTURE §6).

While the provider is online and `nexus_url` is set, the service opens a session (NIP-98,
by the adapter), polls for an offer, acks it within the confirm window, heartbeats while its
job runs and waits for payment, fails it with the reason when the job fails, and confirms
completion (bound to the payment hash) once the wallet itself reported the payment settled
and the job is `paid`. The job runs through the provider's normal flow: this service is a job
source (ports/jobs.py) that claims the Nexus's request for the offer it holds (signed by the
Nexus's key, `p`-tagged to us, with `["starter", offer id]`), at the offer's price.

- A heartbeat the Nexus refuses (409: the lease ended) aborts the job: its buyer, the Nexus,
  is told kind 7000 `error`, and no invoice follows.
- An offer is acked at once when a job slot is free; while every slot is taken it waits for
  one until shortly before the confirm deadline, then gives the offer back ("busy").
- Going offline releases an offer whose job has not delivered yet (its job is aborted); an
  offer whose invoice is out is kept, heartbeated, until it is paid or its lease ends, so
  work already done is not thrown away.
- A Nexus that does not answer is retried with backoff (shown as `unreachable`); a session it
  no longer knows is opened again; after a restart the first poll returns the offer still
  leased to us, and its job is found again by its request id.

One loop does all of it: each wake (a timer, the provider's state, a job transition, a setting)
runs `_step`, which looks at what is and does the one next thing. Owns the `starter` section.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable

from autopilotd.config import Config
from autopilotd.nostr.events import SignedEvent
from autopilotd.ports.jobs import Admission, JobControl
from autopilotd.ports.nexus import (
    NexusClient,
    NexusFactory,
    NexusRefused,
    NexusSession,
    NexusUnreachable,
    StarterOffer,
)
from autopilotd.runtime.clock import Clock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import ProviderState, StarterSection, StarterState
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import SectionWriter, StateStore
from autopilotd.runtime.timers import Timers
from autopilotd.store.db import Store
from autopilotd.store.earnings import Earnings
from autopilotd.store.jobs import Job, Jobs
from autopilotd.vocab import WORKING_STAGES, JobSource, JobStage

logger = logging.getLogger(__name__)

STARTER_TAG = "starter"
POLL_S = 3.0  # between polls while no offer is held
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # backoff after the Nexus did not answer
COMPLETE_RETRY_S = 1.0
COMPLETE_TRIES = 30
SESSION_MARGIN_S = 60.0  # a session this close to its end is opened again
ACK_MARGIN_S = 3.0  # an offer not acked this close to its confirm deadline is given back
BUSY_RECHECK_S = 1.0  # while every slot is taken, look again this often (and when one frees)
LIVE = ("awaiting_ack", "running", "paying", "payment_failed")


@dataclasses.dataclass
class _Lease:
    """The offer held now and what is known of its job."""

    offer: StarterOffer
    job: Job | None = None
    next_heartbeat_at: float = 0.0
    last_heartbeat_at: float | None = None
    complete_tries: int = 0


def starter_offer_id(event: SignedEvent) -> str | None:
    tag = event.first(STARTER_TAG)
    return tag[1] if tag is not None and len(tag) > 1 else None


class StarterService:
    name = "starter"

    def __init__(
        self,
        *,
        nexus: NexusFactory,
        store: Store,
        state: StateStore,
        writer: SectionWriter[StarterSection],
        config: LiveConfig,
        events: EventBus,
        clock: Clock,
    ) -> None:
        self._factory = nexus
        self._jobs = Jobs(store)
        self._earnings = Earnings(store)
        self._state = state
        self._writer = writer
        self._config = config
        self._events = events
        self._clock = clock
        self._timers = Timers(clock)
        self._control: JobControl | None = None
        self._wake = asyncio.Event()
        self._client: NexusClient | None = None
        self._session: NexusSession | None = None
        self._lease: _Lease | None = None
        self._next_poll_at = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self._heartbeat_s = 15.0

    # -- the job source (ports/jobs.py) -------------------------------------------------------

    def attach(self, control: JobControl) -> None:
        self._control = control

    def admission(self, event: SignedEvent) -> Admission | str | None:
        session = self._session
        if session is None or event.pubkey != session.nexus_pubkey:
            return None  # not from our Nexus: the open network's rules
        offer_id = starter_offer_id(event)
        if offer_id is None:
            return None
        lease = self._lease
        if lease is None or lease.offer.offer_id != offer_id:
            return "a starter request for an offer this provider does not hold"
        known = lease.offer.request_id
        if known is not None and known != event.id:
            return "a second starter request for the same offer"
        price = lease.offer.price_msat
        return Admission(JobSource.STARTER, price_msat=price, min_bid_msat=price)

    async def job_changed(self, job: Job) -> None:
        lease = self._lease
        if lease is None or job.source is not JobSource.STARTER or not self._binds(lease, job):
            return
        lease.job = job
        self._poke()

    @staticmethod
    def _binds(lease: _Lease, job: Job) -> bool:
        if lease.offer.request_id is not None:
            return job.request_id == lease.offer.request_id
        try:
            tags = json.loads(job.request_json).get("tags") or []
        except (ValueError, AttributeError):
            return False
        return [STARTER_TAG, lease.offer.offer_id] in [t[:2] for t in tags if isinstance(t, list)]

    # -- the loop -----------------------------------------------------------------------------

    def _poke(self) -> None:
        self._wake.set()

    async def _poke_async(self) -> None:
        self._poke()

    def _wake_at(self, when: float) -> None:
        self._timers.at("wake", when, self._poke_async)

    async def run(self, ready: Callable[[], None]) -> None:
        unsubscribe = [
            self._state.subscribe(self._snapshot_changed),
            self._config.on_change(self._config_changed),
        ]
        try:
            jobs, sats = await self._earnings.from_source(JobSource.STARTER)
            self._writer.set(jobs_done=jobs, sats_earned=sats)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._timers.run())
                ready()
                self._poke()
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    try:
                        await self._step()
                    except Exception:  # one bad step must not end starter demand
                        logger.exception("starter step failed")
                        self._wake_at(self._clock.now() + RETRY_S[-1])
        finally:
            for undo in unsubscribe:
                undo()
            if self._client is not None:
                await self._client.close()

    def _snapshot_changed(self, old: Snapshot, new: Snapshot) -> None:
        before, after = old.provider, new.provider
        if (before.state, before.announced_at) != (after.state, after.announced_at):
            self._poke()
        elif len(old.jobs.active) != len(new.jobs.active) and self._lease is not None:
            self._poke()  # a slot may have freed for an offer waiting to be acked

    async def _config_changed(self, old: Config, new: Config) -> None:
        if old.nexus_url != new.nexus_url:
            self._poke()

    def _online(self) -> bool:
        return self._state.current.provider.state is ProviderState.ONLINE

    async def _step(self) -> None:
        url = self._config.current.nexus_url
        if self._client is None or self._client.url != url.rstrip("/"):
            await self._switch(url)
        if self._client is None:
            self._show(StarterState.OFF, "no Nexus is configured (set nexus_url in Settings)")
            return
        now = self._clock.now()
        if now < self._retry_at:
            self._wake_at(self._retry_at)
            return
        try:
            if self._lease is None and not self._online():
                self._show(StarterState.IDLE, "offline: starter jobs are offered while online")
                return
            if self._lease is None and self._state.current.provider.announced_at is None:
                self._show(StarterState.CONNECTING, "announcing the provider on its relays")
                return  # the Nexus looks for our handler on its relay before it offers
            if self._session is None or now > self._session.expires_at - SESSION_MARGIN_S:
                await self._open(self._client)
            if self._lease is not None:
                await self._tend(self._client, self._lease)
            elif now >= self._next_poll_at:
                await self._poll(self._client)
                if self._lease is not None:
                    self._poke()  # ack it now
            if self._lease is None:
                self._wake_at(self._next_poll_at)
            self._failures = 0
        except NexusUnreachable as exc:
            self._unreachable(exc.reason)
        except NexusRefused as exc:
            if exc.status == 401 and self._session is not None:  # the session ended: open
                self._session = None  # another at once (a refused opening waits, below)
                self._writer.set(session=None)
                self._poke()
                return
            self._unreachable(f"the Nexus refused: {exc.message}")

    async def _switch(self, url: str) -> None:
        """The setting changed: give back what the old Nexus leased us, then use the new one."""
        if self._client is not None:
            if self._lease is not None:
                await self._release(self._client, self._lease, "the provider changed its Nexus")
            await self._client.close()
        self._client = self._factory(url) if url else None
        self._session, self._lease = None, None
        self._next_poll_at = self._retry_at = 0.0
        self._writer.set(
            nexus_url=url or None, nexus_pubkey=None, session=None, offer=None, eligible=None
        )

    def _unreachable(self, reason: str) -> None:
        delay = RETRY_S[min(self._failures, len(RETRY_S) - 1)]
        self._failures += 1
        self._retry_at = self._clock.now() + delay
        self._writer.set(last_error=reason)
        if self._lease is None:
            self._show(StarterState.UNREACHABLE, f"{reason}; trying again in {delay:.0f} s")
        self._wake_at(self._retry_at)

    # -- session and offers -------------------------------------------------------------------

    async def _open(self, client: NexusClient) -> None:
        self._show(StarterState.CONNECTING, f"opening a session with {client.url}")
        session = await client.open_session()
        self._session = session
        self._next_poll_at = 0.0
        self._writer.set(
            nexus_pubkey=session.nexus_pubkey,
            session={
                "session_id": session.session_id,
                "opened_at": self._clock.now(),
                "expires_at": session.expires_at,
            },
        )
        self._events.publish("starter.session_opened", nexus=client.url)

    async def _poll(self, client: NexusClient) -> None:
        answer = await client.poll()
        now = self._clock.now()
        self._next_poll_at = now + POLL_S
        self._heartbeat_s = max(1.0, answer.heartbeat_interval_s)
        self._writer.set(
            eligible=answer.eligible,
            eligibility_reason=answer.reason if not answer.eligible else None,
            budget=dict(answer.budget),
            last_poll_at=now,
            last_error=None,
        )
        offer = next((o for o in answer.offers if o.status in LIVE), None)
        if offer is not None:
            job = await self._jobs.get(offer.request_id) if offer.request_id else None
            self._lease = _Lease(offer, job, next_heartbeat_at=now)
            self._events.publish(
                "starter.offered", offer_id=offer.offer_id, price_sats=offer.price_msat // 1000
            )
            self._show_lease(self._lease)
        elif not answer.eligible:
            self._show(StarterState.INELIGIBLE, f"not eligible now: {answer.reason}")
        else:
            why = f" ({answer.reason})" if answer.reason else ""
            self._show(StarterState.WAITING, f"session open: waiting for an offer{why}")

    async def _tend(self, client: NexusClient, lease: _Lease) -> None:
        """Do the next thing for the offer held; drops it (`_done`) once it has ended."""
        offer, job, now = lease.offer, lease.job, self._clock.now()
        online = self._online()
        if offer.status == "awaiting_ack":
            if not online:
                await self._release(client, lease, "the provider went offline")
            elif self._busy():  # wait for a free slot while the confirm window allows
                deadline = offer.start_confirm_by or now
                if now < deadline - ACK_MARGIN_S:
                    lease.next_heartbeat_at = now + BUSY_RECHECK_S
                else:
                    await self._release(client, lease, "the provider is busy")
            else:
                await self._call(lease, client.ack(offer.offer_id), acked=True)
        elif job is None or job.stage in WORKING_STAGES:
            if not online:
                await self._release(client, lease, "the provider went offline")
            elif now >= lease.next_heartbeat_at:
                await self._call(lease, client.heartbeat(offer.offer_id))
        elif job.stage is JobStage.DELIVERED:
            if now >= lease.next_heartbeat_at:  # kept while the payment is on its way
                await self._call(lease, client.heartbeat(offer.offer_id))
        elif job.stage is JobStage.PAID:
            await self._complete(client, lease, job)
        else:  # failed, or delivered_unpaid: give the lease back with the job's reason
            await self._release(client, lease, job.reason or job.stage.value)
        if self._lease is lease:
            self._show_lease(lease)
            self._wake_at(lease.next_heartbeat_at)

    def _busy(self) -> bool:
        snapshot = self._state.current
        return len(snapshot.jobs.active) >= snapshot.provider.max_inflight

    async def _call(
        self, lease: _Lease, call: Awaitable[StarterOffer], *, acked: bool = False
    ) -> None:
        """An ack or a heartbeat: a refusal means the lease has ended, and so does its job."""
        now = self._clock.now()
        try:
            offer = await call
        except NexusRefused as exc:
            if exc.status == 401:
                raise
            await self._lease_ended(lease, exc.code)
            return
        except NexusUnreachable as exc:  # keep the lease; try again soon
            self._writer.set(last_error=exc.reason)
            lease.next_heartbeat_at = now + min(self._heartbeat_s, RETRY_S[1])
            return
        lease.offer = offer
        lease.last_heartbeat_at = now
        lease.next_heartbeat_at = now + self._heartbeat_s
        self._writer.set(last_error=None)
        if acked:
            self._events.publish(
                "starter.acked", offer_id=offer.offer_id, request_id=offer.request_id
            )

    async def _lease_ended(self, lease: _Lease, code: str) -> None:
        reason = f"the starter lease ended ({code})"
        if lease.job is not None and self._control is not None:
            await self._control.abort(lease.job.request_id, reason)
        elif lease.offer.request_id is not None and self._control is not None:
            await self._control.abort(lease.offer.request_id, reason)
        self._done(lease, "ended", code)

    async def _release(self, client: NexusClient, lease: _Lease, reason: str) -> None:
        job = lease.job
        if job is not None and job.stage in WORKING_STAGES and self._control is not None:
            await self._control.abort(job.request_id, f"starter offer released: {reason}")
        try:
            await client.fail(lease.offer.offer_id, reason)
        except NexusRefused as exc:
            logger.info("releasing offer %s: %s", lease.offer.offer_id, exc)
        except NexusUnreachable as exc:  # the lease lapses on the Nexus by itself
            logger.info("releasing offer %s: %s", lease.offer.offer_id, exc.reason)
        self._done(lease, "released", reason)

    async def _complete(self, client: NexusClient, lease: _Lease, job: Job) -> None:
        """Confirm the payment our wallet settled, bound to its hash (never the other way)."""
        assert job.payment_hash is not None
        try:
            await client.complete(lease.offer.offer_id, job.payment_hash)
        except NexusRefused as exc:
            lease.complete_tries += 1
            if exc.code == "starter_offer_payment_in_flight" and (
                lease.complete_tries < COMPLETE_TRIES
            ):
                lease.next_heartbeat_at = self._clock.now() + COMPLETE_RETRY_S
                return  # the Nexus has not recorded its own payment yet: ask again
            logger.warning("offer %s: completion refused: %s", lease.offer.offer_id, exc)
        except NexusUnreachable:
            lease.complete_tries += 1
            if lease.complete_tries < COMPLETE_TRIES:
                lease.next_heartbeat_at = self._clock.now() + COMPLETE_RETRY_S
                return
        jobs, sats = await self._earnings.from_source(JobSource.STARTER)
        self._writer.set(jobs_done=jobs, sats_earned=sats)
        self._events.publish(
            "starter.completed", offer_id=lease.offer.offer_id, payment_hash=job.payment_hash
        )
        self._done(lease, "paid", None)

    def _done(self, lease: _Lease, outcome: str, reason: str | None) -> None:
        if self._lease is lease:
            self._lease = None
        self._writer.set(
            offer=None,
            last_offer={
                "offer_id": lease.offer.offer_id,
                "outcome": outcome,
                "reason": reason,
                "price_sats": lease.offer.price_msat // 1000,
                "request_id": lease.offer.request_id,
                "at": self._clock.now(),
            },
        )
        if outcome != "paid":
            self._events.publish(
                "starter.offer_ended", offer_id=lease.offer.offer_id, outcome=outcome, reason=reason
            )
        self._next_poll_at = min(self._next_poll_at, self._clock.now())
        self._poke()

    # -- the section --------------------------------------------------------------------------

    def _show(self, state: StarterState, reason: str) -> None:
        self._writer.set(state=state, reason=reason)

    def _show_lease(self, lease: _Lease) -> None:
        offer, job = lease.offer, lease.job
        self._writer.set(
            state=StarterState.OFFERED if offer.status == "awaiting_ack" else StarterState.LEASED,
            reason=_lease_words(offer, job),
            offer={
                "offer_id": offer.offer_id,
                "status": offer.status,
                "kind": offer.kind,
                "price_sats": offer.price_msat // 1000,
                "request_id": offer.request_id,
                "job_stage": job.stage.value if job is not None else None,
                "start_confirm_by": offer.start_confirm_by,
                "execution_expires_at": offer.execution_expires_at,
                "next_heartbeat_due_at": offer.next_heartbeat_due_at,
                "last_heartbeat_at": lease.last_heartbeat_at,
            },
        )


def _lease_words(offer: StarterOffer, job: Job | None) -> str:
    price = f"{offer.price_msat // 1000} sats"
    if offer.status == "awaiting_ack":
        return f"offered a starter job for {price}: accepting it"
    if job is None:
        return f"starter job for {price} accepted: waiting for its request"
    if job.stage is JobStage.DELIVERED:
        return f"starter job delivered: waiting for the Nexus to pay {price}"
    if job.stage is JobStage.PAID:
        return f"starter job paid ({price}): confirming it to the Nexus"
    return f"starter job for {price}: {job.stage.value}"
