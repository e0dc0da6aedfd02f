"""The Nexus's composition and lifecycle: one asyncio process, one TaskGroup.

    store      SQLite (nexus.sqlite3): the treasury's ledger, sessions, offers, receipts
    treasury   its own ldk-node wallet (its own seed; the same Wallet as a daemon's)
    relay      nostr-sdk's LocalRelay on loopback with LMDB storage and a write policy that
               admits job kinds only from pubkeys with a live session
    front      one aiohttp server on the public port: NIP-11, the relay (proxied; writers
               authenticate with NIP-42 there), /api/*, /stats
    desk       starter offers on leases; payouts pay the lessee's invoice from the treasury

A restart loses nothing: leases past their deadline expire on the first pass, and a payment
in flight is asked of the wallet again (keyed by payment hash: never paid twice).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from autopilotd import __version__
from autopilotd.adapters.ldk_node import ldk_node_factory
from autopilotd.adapters.local_relay import has_recent, start_relay
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool
from autopilotd.config import Config
from autopilotd.errors import UserError
from autopilotd.nexus.desk import DeskSettings, StarterDesk
from autopilotd.nexus.front import NexusFront
from autopilotd.nexus.migrations import NEXUS_MIGRATIONS
from autopilotd.nexus.operator import NexusFile, Operator
from autopilotd.nexus.payouts import Payouts
from autopilotd.nexus.repos import AuthSeen, Offer, Offers, Receipts, Session, Sessions
from autopilotd.nexus.sessions import SessionDesk
from autopilotd.nexus.stats import PublicStats
from autopilotd.nostr.events import ShapeError, parse_raw
from autopilotd.nostr.identity import NostrIdentity, identity_from_mnemonic
from autopilotd.nostr.nip90 import KIND_HANDLER, REQUEST_KINDS, RESULT_KINDS
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.paths import Paths, owner_lock, private_dir
from autopilotd.runtime.clock import Clock, SystemClock
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import DaemonSection, WalletState
from autopilotd.runtime.sessionlog import SessionLog, new_session_id
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import StateStore
from autopilotd.runtime.supervisor import Supervisor
from autopilotd.runtime.timers import Timers
from autopilotd.store import Store
from autopilotd.store.ledger import Ledger
from autopilotd.wallet.runner import NodeFactory, WalletService
from autopilotd.wallet.seed import load_or_create_seed
from autopilotd.wallet.service import Wallet

logger = logging.getLogger(__name__)

KIND_FEEDBACK_RANGE = range(7000, 7001)
PRESENCE_MAX_AGE_S = 3600
FEE_MARGIN_MSAT = 10_000
STARTER_TAG = "starter"
RELAY_WAIT_S = 10.0


@dataclass(frozen=True)
class NexusSettings:
    host: str = "127.0.0.1"
    port: int = 0
    relay_port: int = 0
    desk: DeskSettings = dataclasses.field(default_factory=DeskSettings)
    presence_max_age_s: int = PRESENCE_MAX_AGE_S


@dataclass
class Nexus:
    """A running Nexus (what tests and the demo hold)."""

    url: str
    relay_url: str
    identity: NostrIdentity
    wallet: Wallet
    desk: StarterDesk
    offers: Offers
    stop: asyncio.Event


def _is_job_kind(kind: int) -> bool:
    return kind in REQUEST_KINDS or kind in RESULT_KINDS or kind in KIND_FEEDBACK_RANGE


async def run_nexus(
    config: Config,
    settings: NexusSettings,
    *,
    node_factory: NodeFactory | None = None,
    clock: Clock | None = None,
    started: Callable[[Nexus], None] | None = None,
) -> int:
    """Run a Nexus until SIGTERM/SIGINT (or `Nexus.stop`); `started(nexus)` once it serves."""
    if config.wallet_network == "off":
        raise UserError(
            "a Nexus pays from its treasury wallet: set wallet_network (and its chain source) "
            "in its config.toml or AUTOPILOTD_WALLET_NETWORK"
        )
    paths = config.paths
    for directory in (paths.config_dir, paths.data_dir, paths.runtime_dir, paths.log_dir):
        private_dir(directory)
    clock = clock or SystemClock()
    with owner_lock(paths.lock_file):
        log = SessionLog(
            paths.log_dir, new_session_id(), config.log_keep_sessions, config.log_keep_bytes
        )
        log.open()
        store = await Store.open(
            paths.data_dir / "nexus.sqlite3", NEXUS_MIGRATIONS, group_commit=True
        )
        try:
            return await _serve(config, settings, log, store, node_factory, clock, started)
        finally:
            await store.close()
            log.close()


async def _serve(
    config: Config,
    settings: NexusSettings,
    log: SessionLog,
    store: Store,
    node_factory: NodeFactory | None,
    clock: Clock,
    started: Callable[[Nexus], None] | None,
) -> int:
    import nostr_sdk as sdk  # the relay's database lives in the adapter's world

    mnemonic, _ = load_or_create_seed(config.paths.data_dir)
    identity = identity_from_mnemonic(mnemonic)
    del mnemonic
    events = EventBus(sink=log)
    state = StateStore(
        Snapshot(
            seq=0,
            daemon=DaemonSection(
                __version__, os.getpid(), time.time(), config.paths.display_home(), log.session_id
            ),
        ),
        events,
        clock,
    )
    live = LiveConfig(config)
    wallet = Wallet(config=live, ledger=Ledger(store), writer=state.writer("wallet"), events=events)
    treasury = WalletService(wallet, node_factory or ldk_node_factory(config))
    sessions, offers, receipts = Sessions(store), Offers(store), Receipts(store)
    session_desk = SessionDesk(sessions=sessions, seen=AuthSeen(store), clock=clock)
    await session_desk.load()
    me = identity.pubkey_hex

    def admit(author: str, kind: int) -> str | None:
        if _is_job_kind(kind) and author != me and not session_desk.is_live(author):
            return "restricted: job events only from providers with a session (POST /api/session)"
        return None

    database = await sdk.NostrLmdb.open(str(config.paths.data_dir / "relay-lmdb"))
    relay = await start_relay(
        settings.host if settings.host != "localhost" else "127.0.0.1",
        settings.relay_port,
        database=database,
        admit=admit,  # NIP-42 is the front's: the relay would want its own URL in AUTH
    )
    pool = RelayPool(PoolConfig(relays=(relay.url,)), identity=identity)
    timers = Timers(clock)

    async def eligibility(session: Session) -> str | None:
        since = int(clock.now()) - settings.presence_max_age_s
        if not await has_recent(
            database, author=session.pubkey, kinds=(KIND_HANDLER,), since=since
        ):
            return "starter_demand_requires_provider_presence_on_this_relay"
        return None

    def funds(price_msat: int, reserved_msat: int) -> str | None:
        section = state.current.wallet
        if section.state is not WalletState.READY or section.balance is None:
            return "treasury_not_ready"
        spendable = section.balance.spendable_sats * 1000
        if spendable < reserved_msat + price_msat + FEE_MARGIN_MSAT:
            return "treasury_insufficient_funds"
        return None

    def sign(offer: Offer) -> tuple[str, str]:
        assert offer.execution_expires_at is not None
        event = build_job_request(
            identity,
            offer.kind,
            offer.prompt,
            bid_msat=offer.price_msat,
            params={"max_tokens": 64},
            providers=[offer.provider],
            expires_at=int(offer.execution_expires_at),
            extra_tags=[[STARTER_TAG, offer.id]],
        )
        return event.id, event.json

    async def publish(offer: Offer) -> None:
        event = parse_raw(offer.request_json or "")
        assert not isinstance(event, ShapeError), event  # our own request, as signed
        report = await pool.publish(event)
        if not report.any_accepted:
            logger.warning("offer %s: the relay did not take its request", offer.id)

    desk = StarterDesk(
        offers=offers,
        receipts=receipts,
        settings=settings.desk,
        clock=clock,
        eligibility=eligibility,
        funds=funds,
        sign=sign,
        publish=publish,
    )
    payouts = Payouts(
        subscription=pool.subscription("payouts"),
        desk=desk,
        offers=offers,
        treasury=wallet,
        clock=clock,
        timers=timers,
    )

    def treasury_state() -> dict[str, Any]:
        """For the public: the state in fixed words (the wallet's reasons may name its node)."""
        section = state.current.wallet
        if section.state is not WalletState.READY:
            return {"state": section.state.value, "reason": "the treasury wallet is not ready"}
        if (
            section.balance is None
            or section.balance.spendable_sats < desk.settings.reserve_cap_sats
        ):
            return {"state": "degraded", "reason": "low on funds"}
        return {"state": "ready", "reason": None}

    stats = PublicStats(
        sessions=sessions, receipts=receipts, desk=desk, treasury=treasury_state, clock=clock
    )
    operator = Operator(wallet=wallet, state=state)
    front = NexusFront(
        operator=operator,
        sessions=session_desk,
        desk=desk,
        stats=stats,
        clock=clock,
        relay_url=relay.url,
        info=_nip11(identity),
        after_ack=payouts.follow,
    )
    runner = web.AppRunner(front.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(state.writer("services"), events, clock)
    try:
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://{settings.host}:{port}"
        await desk.expire_due()  # the first pass after a restart
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(supervisor.supervise(treasury), name="treasury"),
                tg.create_task(pool.run(), name="relay pool"),
                tg.create_task(timers.run(), name="timers"),
                tg.create_task(payouts.run(), name="payouts"),
            ]
            await _wallet_settled(state)
            await payouts.resume()
            if await _connected(pool, RELAY_WAIT_S):
                await desk.republish()  # a request recorded but perhaps never published
            logger.info("nexus %s serving at %s (relay %s)", me[:16], url, relay.url)
            NexusFile(
                url=url,
                relay_url=f"ws://{settings.host}:{port}/",
                pubkey=me,
                pid=os.getpid(),
                operator_token=operator.token,
            ).write(config.paths.runtime_dir)
            if started is not None:
                started(
                    Nexus(
                        url, f"ws://{settings.host}:{port}/", identity, wallet, desk, offers, stop
                    )
                )
            await stop.wait()
            for task in tasks:
                task.cancel()
    finally:
        NexusFile.path(config.paths.runtime_dir).unlink(missing_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        relay.shutdown()
    return 0


async def _connected(pool: RelayPool, timeout: float) -> bool:
    """Until the pool is connected to the Nexus's own relay (False after `timeout` s)."""
    changed = asyncio.Event()
    undo = pool.on_health(lambda health: changed.set())
    try:
        async with asyncio.timeout(timeout):
            while not all(h.connected for h in pool.health()):
                changed.clear()
                await changed.wait()
        return True
    except TimeoutError:
        logger.warning("the Nexus's own relay did not connect in %.0f s", timeout)
        return False
    finally:
        undo()


async def _wallet_settled(state: StateStore) -> None:
    """Until the treasury is ready or has failed (payments in flight are resumed after it).
    Its section reads `off` until its service has started, so `off` is not settled."""
    snapshot = state.current
    while snapshot.wallet.state not in (WalletState.READY, WalletState.ERROR):
        snapshot = await state.wait_for_change(snapshot.seq)


def _nip11(identity: NostrIdentity) -> dict[str, Any]:
    return {
        "name": "autopilotd nexus",
        "description": "Starter demand for new providers: small paid NIP-90 jobs, one "
        "provider at a time, paid from this Nexus's treasury.",
        "pubkey": identity.pubkey_hex,
        "supported_nips": [1, 9, 11, 40, 42, 89, 90, 98],
        "software": "autopilotd",
        "version": __version__,
        "limitation": {"auth_required": False, "restricted_writes": True},
    }


def nexus_paths(home: Path | None) -> Paths:
    return Paths.for_home(home) if home is not None else Paths.default()
