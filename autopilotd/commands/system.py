"""The daemon's own commands: discovery, status, events, logs, waiting and stopping."""

from __future__ import annotations

import asyncio
import platform
import sys
from typing import Annotated, Any

from autopilotd import __version__
from autopilotd.codec import Bounds
from autopilotd.errors import InvalidParams
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime

LONG_POLL_MAX_S = 25.0
"""A single long-poll call waits at most this long; clients loop for longer waits."""


def register(reg: Registry, rt: Runtime) -> None:
    @reg.command("system.commands")
    async def system_commands() -> list[dict[str, Any]]:
        """List every command with its parameters, types, access level and help.

        This is the source from which autopilotctl builds its options, the MCP server its tool
        list, and the docs their command reference.
        """
        return reg.describe()

    @reg.command("system.version")
    async def system_version() -> dict[str, Any]:
        """Show the versions of autopilotd and of the Python it runs on."""
        return {
            "autopilotd": __version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        }

    @reg.command("status")
    async def status() -> dict[str, Any]:
        """Show the daemon's current state snapshot: daemon, services and every later section.

        The web UI and `autopilotctl status` render exactly this object.
        """
        return rt.state.current.to_json(rt.clock.now())

    @reg.command("status.wait")
    async def status_wait(after_seq: int, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait until the snapshot changes past `after_seq`, then return it.

        Returns the current snapshot when `timeout_s` (at most 25) passes without change.
        """
        timeout = clamp_timeout(timeout_s)
        snapshot = await rt.state.wait_for_change(after_seq, timeout)
        return snapshot.to_json(rt.clock.now())

    @reg.command("events.wait")
    async def events_wait(
        after: int = 0, timeout_s: float = 20.0, limit: Annotated[int, Bounds(1, 1000)] = 200
    ) -> dict[str, Any]:
        """Return events with an id greater than `after`, waiting up to `timeout_s` for one.

        Long-poll: pass the last id you saw as `after`. `missed` is true when older events
        were dropped from the in-memory window before you asked (the session log has them all).
        """
        events, missed = await rt.events.wait(after, clamp_timeout(timeout_s), limit)
        return {
            "events": [e.to_json() for e in events],
            "last_id": events[-1].id if events else max(after, 0),
            "missed": missed,
        }

    @reg.command("logs.tail")
    async def logs_tail(lines: Annotated[int, Bounds(1, 1000)] = 50) -> dict[str, Any]:
        """Return the last `lines` records (at most 1000) of the current session log."""
        return {
            "session": rt.log.session_id,
            "path": str(rt.log.path),
            "records": rt.log.tail(lines),
        }

    @reg.command("logs.mark", access="control")
    async def logs_mark(message: str) -> dict[str, Any]:
        """Write a marker line into the session log, to find a moment again when reporting a bug."""
        if not message.strip() or len(message) > 500:
            raise InvalidParams("message must be 1 to 500 characters")
        event = rt.events.publish("logs.marked", text=message)
        return {"event_id": event.id}

    @reg.command("wait.conditions")
    async def wait_conditions() -> list[dict[str, Any]]:
        """List the conditions `wait.until` (and `autopilotctl wait`) understands."""
        return [{"name": c.name, "help": c.help} for c in rt.conditions.all()]

    @reg.command("wait.until")
    async def wait_until(condition: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait until a named condition holds on the snapshot (see `wait.conditions`).

        Returns `met: false` when `timeout_s` (at most 25 per call) passes first.
        """
        cond = rt.conditions.get(condition)
        snapshot = rt.state.current
        try:
            async with asyncio.timeout(clamp_timeout(timeout_s)):
                while not cond.predicate(snapshot):
                    snapshot = await rt.state.wait_for_change(snapshot.seq)
        except TimeoutError:
            pass
        return {"condition": condition, "met": cond.predicate(snapshot), "seq": snapshot.seq}

    @reg.command("system.store")
    async def system_store() -> dict[str, Any]:
        """Show the database's health: journal mode, synchronous, foreign keys, integrity,
        schema version and its path (what the start-up checks assert)."""
        return {**await rt.store.settings(), "path": str(rt.store.path)}

    @reg.command("daemon.restart", access="owner")
    async def daemon_restart() -> dict[str, Any]:
        """Stop cleanly and start again in the same process, applying the settings saved for
        the next start (a wallet network, a network profile). Owner only."""
        rt.events.publish("daemon.restart_requested")
        rt.request_restart()
        return {"restarting": True}

    @reg.command("daemon.stop", access="control")
    async def daemon_stop() -> dict[str, Any]:
        """Stop the daemon cleanly: services are cancelled, the manifest is removed, then exit."""
        rt.events.publish("daemon.stop_requested")
        rt.request_stop()
        return {"stopping": True}


def clamp_timeout(timeout_s: float) -> float:
    """A long-poll's wait: never negative, at most LONG_POLL_MAX_S."""
    if timeout_s < 0:
        raise InvalidParams("timeout_s must not be negative")
    return min(timeout_s, LONG_POLL_MAX_S)
