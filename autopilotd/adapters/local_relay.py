"""A local Nostr relay on nostr-sdk's `LocalRelay`, for tests, the demo and smoke runs.

Loopback only: the host must be a loopback address (or `localhost`), anything else is refused.
The SDK's builder rate-limits each connection to 60 events per minute by default, which a
buyer daemon sending a job every few seconds plus its feedback already exceeds; we raise it
to `DEFAULT_NOTES_PER_MINUTE`. Events live in the relay's memory and vanish with it.

Use `local_relay()` (an async context manager) in tests and the demo; `main(argv)` is the
`autopilotd relay [--host 127.0.0.1] [--port N] [--print-url]` command: it binds, checks the
port answers, prints the URL (with `--print-url`, one line on stdout, nothing else) and
serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nostr_sdk as sdk

from autopilotd.loopback import free_port

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_NOTES_PER_MINUTE = 60_000
DEFAULT_MAX_REQS = 500
"""Concurrent subscriptions per connection."""


class RelayStartError(RuntimeError):
    """The relay could not be started as asked (not loopback, port busy …)."""


def check_loopback(host: str) -> str:
    """Return `host` if it is a loopback address or `localhost`; raise RelayStartError."""
    if host == "localhost":
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise RelayStartError(f"the local relay binds to loopback only, not {host!r}")


@dataclass(frozen=True)
class RunningRelay:
    """A started local relay; `url` is what clients connect to."""

    url: str
    host: str
    port: int
    relay: sdk.LocalRelay

    def shutdown(self) -> None:
        self.relay.shutdown()


async def _wait_listening(host: str, port: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


async def start_relay(
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    notes_per_minute: int = DEFAULT_NOTES_PER_MINUTE,
    max_reqs: int = DEFAULT_MAX_REQS,
    database: sdk.NostrDatabase | None = None,
) -> RunningRelay:
    """Start a relay on `host:port` (0 = a free port) and return once it accepts connections.

    Pass the same `database` to a relay restarted on the same port to keep its events.
    """
    check_loopback(host)
    if port == 0:
        port = free_port(host)
    builder = (
        sdk.LocalRelayBuilder()
        .addr(host if host != "localhost" else DEFAULT_HOST)
        .port(port)
        .rate_limit(sdk.RateLimit(max_reqs=max_reqs, notes_per_minute=notes_per_minute))
    )
    if database is not None:
        builder = builder.database(database)
    relay = builder.build()
    try:
        await relay.run()
        await _wait_listening(host, port, 5.0)
    except (Exception, asyncio.CancelledError) as exc:
        relay.shutdown()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise RelayStartError(f"cannot start a relay on {host}:{port}: {exc}") from exc
    url = f"ws://{host}:{port}" if ":" not in host else f"ws://[{host}]:{port}"
    logger.info("local relay listening on %s", url)
    return RunningRelay(url=url, host=host, port=port, relay=relay)


@contextlib.asynccontextmanager
async def local_relay(
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    notes_per_minute: int = DEFAULT_NOTES_PER_MINUTE,
    max_reqs: int = DEFAULT_MAX_REQS,
    database: sdk.NostrDatabase | None = None,
) -> AsyncIterator[RunningRelay]:
    """`async with local_relay() as relay:` a relay for the block's duration."""
    running = await start_relay(
        host, port, notes_per_minute=notes_per_minute, max_reqs=max_reqs, database=database
    )
    try:
        yield running
    finally:
        running.shutdown()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopilotd relay",
        description="Run a local Nostr relay (loopback only, events kept in memory).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 = pick a free one)")
    parser.add_argument(
        "--print-url", action="store_true", help="print the relay URL on stdout once listening"
    )
    parser.add_argument(
        "--notes-per-minute",
        type=int,
        default=DEFAULT_NOTES_PER_MINUTE,
        help="events accepted per minute per connection",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with local_relay(args.host, args.port, notes_per_minute=args.notes_per_minute) as relay:
        if args.print_url:
            print(relay.url, flush=True)
        else:
            print(f"relay listening on {relay.url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
        await stop.wait()


def main(argv: list[str]) -> int:
    """`autopilotd relay …`: serve a local relay until SIGINT/SIGTERM. Returns the exit code."""
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print("autopilotd relay: --port must be between 0 and 65535", file=sys.stderr)
        return 2
    if args.notes_per_minute < 1:
        print("autopilotd relay: --notes-per-minute must be positive", file=sys.stderr)
        return 2
    try:
        check_loopback(args.host)
        asyncio.run(_serve(args))
    except RelayStartError as exc:
        print(f"autopilotd relay: {exc}", file=sys.stderr)
        return 1
    return 0
