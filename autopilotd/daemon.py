"""`autopilotd run`: start-up checks, one TaskGroup of services, the manifest, a bounded stop.

Order matters and is the point of this module:
1. directories (0700) and the single-owner lock, the session log, the store's assertions;
2. the daemon is wired (app.py), the control-plane socket is bound, services start under one
   TaskGroup;
3. only once the control plane serves is the manifest written and systemd told READY=1;
4. stop (SIGTERM, SIGINT or `daemon.stop`) cancels the services, bounded by a timeout; the
   manifest is removed, the session is closed in the store, and the lock released.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable

from autopilotd import __version__
from autopilotd.app import Adapters, App, build
from autopilotd.commands import Registrar
from autopilotd.config import Config
from autopilotd.control_plane import ControlPlane, bind_loopback
from autopilotd.errors import StartupCheckFailed
from autopilotd.manifest import SCHEMA_VERSION, Manifest, remove_manifest, write_manifest
from autopilotd.paths import owner_lock, private_dir
from autopilotd.runtime.context import Runtime, Service
from autopilotd.runtime.notify import sd_notify
from autopilotd.runtime.sections import DaemonState, ServiceState
from autopilotd.runtime.sessionlog import SessionLog, new_session_id
from autopilotd.runtime.supervisor import Supervisor
from autopilotd.store import Store
from autopilotd.store.sessions import DaemonSessions

logger = logging.getLogger(__name__)

ServiceFactory = Callable[[Runtime], Service]
"""Extra services (tests): made from the kernel, run beside the daemon's own."""

EXIT_OK = 0
EXIT_STARTUP_FAILED = 78  # EX_CONFIG: systemd's Restart=on-failure will not loop on it forever
EXIT_STOP_TIMEOUT = 70
EXIT_RESTART = 75  # stopped cleanly to start again: `autopilotd run` re-executes itself


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
                started_at = time.time()
                sessions = DaemonSessions(store)
                unclean = await sessions.unclean()
                if unclean is not None:
                    logger.warning("the previous session %s ended without a clean stop", unclean)
                await sessions.start(session_id, os.getpid(), __version__, started_at)
                app = build(
                    config,
                    log,
                    store,
                    registrars=registrars,
                    adapters=adapters,
                    started_at=started_at,
                )
                try:
                    return await _serve(app, [make(app.rt) for make in services])
                finally:
                    await sessions.stop(session_id)
            finally:
                await store.close()
        finally:
            logging.getLogger().removeHandler(handler)
            log.close()


async def _serve(app: App, extra: list[Service]) -> int:
    rt = app.rt
    config = rt.config
    paths = config.paths
    if app.seed_created:
        rt.events.publish("wallet.seed_created")
    try:
        sock = bind_loopback(config.listen_host, config.listen_port)
    except OSError as exc:
        raise StartupCheckFailed(
            f"cannot listen on {config.listen_host}:{config.listen_port} ({exc.strerror}); "
            "choose another listen_port or stop what uses it"
        ) from None
    control = ControlPlane(rt, app.auth, sock)
    daemon = rt.state.writer("daemon")
    supervisor = Supervisor(rt.state.writer("services"), rt.events, rt.clock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rt.request_stop)
    manifest_written = False
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(supervisor.supervise(s), name=s.name)
                for s in (control, *app.services, *extra)
            ]
            if not await _control_plane_up(rt, control.name):
                rt.request_stop()
            else:
                daemon.set(
                    state=DaemonState.READY, rpc_url=control.rpc_url, web_url=control.web_url
                )
                write_manifest(
                    paths.manifest_file,
                    Manifest(
                        schema_version=SCHEMA_VERSION,
                        pid=os.getpid(),
                        started_at=rt.state.current.daemon.started_at,
                        version=__version__,
                        rpc_url=control.rpc_url,
                        web_url=control.web_url,
                        auth_token=rt.tokens.owner,
                        home=paths.display_home(),
                        latest_session_log=str(rt.log.latest),
                    ),
                )
                manifest_written = True
                sd_notify("READY=1")
                rt.events.publish("daemon.ready", rpc_url=control.rpc_url, web_url=control.web_url)
                logger.info("autopilotd %s ready at %s", __version__, control.web_url)
            await rt.stop_requested.wait()
            sd_notify("STOPPING=1")
            daemon.set(state=DaemonState.STOPPING)
            rt.events.publish("daemon.stopping")
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=config.stop_timeout_s)
            if pending:
                # docs/decisions/0002: a service that ignores cancellation must not keep the
                # daemon (and its lock) alive forever; what is durable is already durable.
                names = ", ".join(sorted(t.get_name() for t in pending))
                logger.error(
                    "services did not stop within %.0f s: %s", config.stop_timeout_s, names
                )
                remove_manifest(paths.manifest_file, os.getpid())
                await DaemonSessions(rt.store).stop(rt.log.session_id)
                rt.log.close()
                os._exit(EXIT_STOP_TIMEOUT)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if manifest_written:
            remove_manifest(paths.manifest_file, os.getpid())
    failed = supervisor.status(control.name)
    if not manifest_written and failed is not None and failed.state is ServiceState.FAILED:
        raise StartupCheckFailed(f"the control plane could not start: {failed.last_error}")
    if rt.restart_requested:
        logger.info("autopilotd stopped cleanly; starting again")
        return EXIT_RESTART
    logger.info("autopilotd stopped cleanly")
    return EXIT_OK


async def _control_plane_up(rt: Runtime, name: str) -> bool:
    """Wait for the control plane to serve (True) or fail (False)."""
    snapshot = rt.state.current
    while True:
        status = snapshot.service(name)
        if status is not None and status.state is ServiceState.RUNNING:
            return True
        if status is not None and status.state in (ServiceState.FAILED, ServiceState.STOPPED):
            return False
        snapshot = await rt.state.wait_for_change(snapshot.seq)
