"""`autopilotd run`: start-up checks, one TaskGroup of services, the manifest, a bounded stop.

Order matters and is the point of this module:
1. directories (0700) and the single-owner lock, the session log, the store's assertions;
2. the control-plane socket is bound, services start under one TaskGroup;
3. only once the control plane serves is the manifest written and systemd told READY=1;
4. stop (SIGTERM, SIGINT or `daemon.stop`) cancels the services, bounded by a timeout; the
   manifest is removed, the session is closed in the store, and the lock released.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from autopilotd import __version__
from autopilotd.buyer import commands as buyer_commands
from autopilotd.buyer.service import Buyer, BuyerService
from autopilotd.commands import BUILTINS, Registrar
from autopilotd.commands import settings as settings_commands
from autopilotd.config import Config
from autopilotd.errors import StartupCheckFailed
from autopilotd.inference import commands as runtime_commands
from autopilotd.inference.port import Inference
from autopilotd.inference.service import LocalRuntime, LocalRuntimeService
from autopilotd.manifest import SCHEMA_VERSION, Manifest, remove_manifest, write_manifest
from autopilotd.nostr.identity import identity_from_mnemonic
from autopilotd.paths import private_dir
from autopilotd.provider import commands as provider_commands
from autopilotd.provider.service import Provider, ProviderService
from autopilotd.registry import Registry
from autopilotd.rpc.server import ControlPlane, bind_loopback
from autopilotd.runtime.approvals import Approvals
from autopilotd.runtime.conditions import builtin_conditions
from autopilotd.runtime.context import Runtime, Service
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.notify import sd_notify
from autopilotd.runtime.snapshot import (
    DaemonSection,
    DaemonState,
    RuntimeState,
    ServiceState,
    Snapshot,
)
from autopilotd.runtime.state import StateStore
from autopilotd.runtime.supervisor import supervise
from autopilotd.runtime.tokens import TokenBook
from autopilotd.sessionlog import SessionLog, new_session_id
from autopilotd.store import Store
from autopilotd.wallet import commands as wallet_commands
from autopilotd.wallet.ldk_adapter import ldk_node_factory
from autopilotd.wallet.seed import load_or_create_seed
from autopilotd.wallet.service import NodeFactory, Wallet, WalletService
from autopilotd.web import commands as web_commands

logger = logging.getLogger(__name__)

ServiceFactory = Callable[[Runtime], Service]

EXIT_OK = 0
EXIT_STARTUP_FAILED = 78  # EX_CONFIG: systemd's Restart=on-failure will not loop on it forever
EXIT_STOP_TIMEOUT = 70


@dataclasses.dataclass(frozen=True)
class Adapters:
    """Replacements for the real adapters, for fast tests (never used by the daemon itself)."""

    node_factory: NodeFactory | None = None
    inference: Inference | None = None


@contextlib.contextmanager
def owner_lock(path: Path) -> Iterator[None]:
    """One process owns a home's database at a time (RELIABILITY D3)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupCheckFailed(
                f"another autopilotd already runs with this home ({path.parent}); "
                "stop it first, or use a different --home"
            ) from None
        yield
    finally:
        os.close(fd)


async def run_daemon(
    config: Config,
    *,
    registrars: Iterable[Registrar] = (),
    services: Iterable[ServiceFactory] = (),
    adapters: Adapters | None = None,
) -> int:
    """Run the daemon until asked to stop; return the process exit code."""
    paths = config.paths
    for directory in (paths.config_dir, paths.data_dir, paths.runtime_dir, paths.log_dir):
        private_dir(directory)
    with owner_lock(paths.lock_file):
        session_id = new_session_id()
        log = SessionLog(paths.log_dir, session_id, config.log_keep_sessions, config.log_keep_bytes)
        log.open()
        handler = log.handler(getattr(logging, config.log_level.upper()))
        logging.getLogger().addHandler(handler)
        try:
            store = await Store.open(paths.database_file)
            try:
                return await _run(config, log, store, registrars, services, adapters)
            finally:
                await store.close()
        finally:
            logging.getLogger().removeHandler(handler)
            log.close()


async def _record_session(store: Store, session_id: str, started_at: float) -> None:
    unclean = await store.fetchone(
        "SELECT id FROM daemon_sessions WHERE stopped_at IS NULL ORDER BY started_at DESC LIMIT 1"
    )
    if unclean is not None:
        logger.warning("the previous session %s ended without a clean stop", unclean[0])
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO daemon_sessions (id, pid, version, started_at) VALUES (?, ?, ?, ?)",
            (session_id, os.getpid(), __version__, started_at),
        )


async def _close_session(store: Store, session_id: str) -> None:
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE daemon_sessions SET stopped_at = ? WHERE id = ?", (time.time(), session_id)
        )


def make_runtime(
    config: Config,
    log: SessionLog,
    store: Store,
    registrars: Iterable[Registrar] = (),
    started_at: float | None = None,
    adapters: Adapters | None = None,
) -> Runtime:
    """Assemble a Runtime and register the built-in commands plus `registrars`."""
    started = time.time() if started_at is None else started_at
    daemon = DaemonSection(
        version=__version__,
        pid=os.getpid(),
        started_at=started,
        home=config.paths.display_home(),
        session_id=log.session_id,
    )
    registry = Registry()
    rt = Runtime(
        config=config,
        state=StateStore(Snapshot(seq=0, daemon=daemon)),
        events=EventBus(sink=log),
        store=store,
        log=log,
        registry=registry,
        tokens=TokenBook(),
        approvals=Approvals(),
        conditions=builtin_conditions(),
    )
    adapters = adapters or Adapters()
    rt.wallet = Wallet(rt, adapters.node_factory or ldk_node_factory(config))
    wallet_commands.register(registry, rt, rt.wallet)
    rt.local_runtime = LocalRuntime(rt, adapters.inference)
    runtime_commands.register(registry, rt, rt.local_runtime)
    web_commands.register(registry, rt.web_auth)
    rt.provider = Provider(rt)
    provider_commands.register(registry, rt, rt.provider)
    rt.buyer = Buyer(rt)
    buyer_commands.register(registry, rt, rt.buyer)
    settings_commands.register(registry, rt)  # applies changes through provider and buyer
    if adapters.inference is not None:
        rt.local_runtime.publish(state=RuntimeState.STARTING, reason="checking the runtime")
    for register in (*BUILTINS, *registrars):
        register(registry, rt)
    return rt


async def _run(
    config: Config,
    log: SessionLog,
    store: Store,
    registrars: Iterable[Registrar],
    service_factories: Iterable[ServiceFactory],
    adapters: Adapters | None,
) -> int:
    paths = config.paths
    started_at = time.time()
    await _record_session(store, log.session_id, started_at)
    rt = make_runtime(config, log, store, registrars, started_at, adapters)
    mnemonic, created = load_or_create_seed(paths.data_dir)  # one seed: wallet and identity
    rt.identity = identity_from_mnemonic(mnemonic)
    del mnemonic
    if created:
        rt.events.publish("wallet.seed_created")
    extra: list[ServiceFactory] = []
    if config.wallet_network != "off":
        extra.append(lambda rt: WalletService(rt.wallet))
    if config.runtime_mode != "off" and (adapters is None or adapters.inference is None):
        extra.append(lambda rt: LocalRuntimeService(rt.local_runtime))
    # Always: with no relays the provider shows that blocker, and relays can be added live.
    extra.append(lambda rt: ProviderService(rt.provider))
    extra.append(lambda rt: BuyerService(rt.buyer))
    service_factories = [*extra, *service_factories]
    try:
        sock = bind_loopback(config.listen_host, config.listen_port)
    except OSError as exc:
        raise StartupCheckFailed(
            f"cannot listen on {config.listen_host}:{config.listen_port} ({exc.strerror}); "
            "choose another listen_port or stop what uses it"
        ) from None
    control = ControlPlane(rt, sock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rt.request_stop)
    manifest_written = False
    try:
        async with asyncio.TaskGroup() as tg:
            all_services: list[Service] = [control, *(make(rt) for make in service_factories)]
            tasks = [tg.create_task(supervise(rt, s), name=s.name) for s in all_services]
            if not await _control_plane_up(rt):
                rt.request_stop()
            else:
                rt.state.update(
                    lambda s: dataclasses.replace(
                        s,
                        daemon=dataclasses.replace(
                            s.daemon,
                            state=DaemonState.READY,
                            rpc_url=control.rpc_url,
                            web_url=control.web_url,
                        ),
                    )
                )
                write_manifest(
                    paths.manifest_file,
                    Manifest(
                        schema_version=SCHEMA_VERSION,
                        pid=os.getpid(),
                        started_at=started_at,
                        version=__version__,
                        rpc_url=control.rpc_url,
                        web_url=control.web_url,
                        auth_token=rt.tokens.owner,
                        home=paths.display_home(),
                        latest_session_log=str(log.latest),
                    ),
                )
                manifest_written = True
                sd_notify("READY=1")
                rt.events.publish("daemon.ready", rpc_url=control.rpc_url, web_url=control.web_url)
                logger.info("autopilotd %s ready at %s", __version__, control.web_url)
            await rt.stop_requested.wait()
            sd_notify("STOPPING=1")
            rt.state.update(
                lambda s: dataclasses.replace(
                    s, daemon=dataclasses.replace(s.daemon, state=DaemonState.STOPPING)
                )
            )
            rt.events.publish("daemon.stopping")
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=config.stop_timeout_s)
            if pending:
                names = ", ".join(sorted(t.get_name() for t in pending))
                logger.error(
                    "services did not stop within %.0f s: %s", config.stop_timeout_s, names
                )
                remove_manifest(paths.manifest_file, os.getpid())
                await _close_session(store, log.session_id)
                log.close()
                os._exit(EXIT_STOP_TIMEOUT)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if manifest_written:
            remove_manifest(paths.manifest_file, os.getpid())
    await _close_session(store, log.session_id)
    failed = rt.state.current.service(control.name)
    if not manifest_written and failed is not None and failed.state is ServiceState.FAILED:
        raise StartupCheckFailed(f"the control plane could not start: {failed.last_error}")
    logger.info("autopilotd stopped cleanly")
    return EXIT_OK


async def _control_plane_up(rt: Runtime) -> bool:
    """Wait for the control plane to serve (True) or fail (False)."""
    snapshot = rt.state.current
    while True:
        status = snapshot.service(ControlPlane.name)
        if status is not None and status.state is ServiceState.RUNNING:
            return True
        if status is not None and status.state in (ServiceState.FAILED, ServiceState.STOPPED):
            return False
        snapshot = await rt.state.wait_for_change(snapshot.seq)
