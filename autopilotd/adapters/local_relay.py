"""A local Nostr relay on nostr-sdk's `LocalRelay`, for tests, the demo and smoke runs.

Loopback only: the host must be a loopback address (or `localhost`), anything else is refused.
The SDK's builder rate-limits each connection to 60 events per minute by default, which a
buyer daemon sending a job every few seconds plus its feedback already exceeds; we raise it
to `DEFAULT_NOTES_PER_MINUTE`. Events live in the relay's memory and vanish with it, unless a
`database` is given (a Nexus keeps them in LMDB).

A `database` and an `admit` write policy are Python objects the relay calls back from its own
threads: the running loop is lent to the SDK while such a relay runs (sdk_loop.py).

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import nostr_sdk as sdk

from autopilotd.adapters.sdk_loop import LoopLoan
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
    loan: LoopLoan | None = field(default=None, repr=False, compare=False)

    def shutdown(self) -> None:
        self.relay.shutdown()
        if self.loan is not None:
            self.loan.release()


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


Admit = Callable[[str, int], str | None]
"""A write policy: (author pubkey, kind) → why the event is refused, or None to accept it."""


class _WritePolicy(sdk.WritePolicy):  # type: ignore[misc]
    def __init__(self, admit: Admit) -> None:
        self._admit = admit

    async def admit_event(self, event: sdk.Event, socket_addr: str) -> sdk.WritePolicyResult:
        try:
            reason = self._admit(event.author().to_hex(), event.kind().as_u16())
        except Exception:  # a policy that breaks refuses, it never lets everything in
            logger.exception("write policy failed")
            reason = "error: the relay could not check this event"
        if reason is None:
            return sdk.WritePolicyResult.ACCEPT()
        return sdk.WritePolicyResult.REJECT(reason)


async def start_relay(
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    notes_per_minute: int = DEFAULT_NOTES_PER_MINUTE,
    max_reqs: int = DEFAULT_MAX_REQS,
    database: sdk.NostrDatabase | None = None,
    auth_writes: bool = False,
    admit: Admit | None = None,
    max_results: int | None = None,
) -> RunningRelay:
    """Start a relay on `host:port` (0 = a free port) and return once it accepts connections.

    Pass the same `database` to a relay restarted on the same port to keep its events.
    `auth_writes` asks every writer to authenticate first (NIP-42; the relay accepts only an
    AUTH event whose `relay` tag is its own `ws://host:port`, so a relay behind a proxy must
    leave NIP-42 to the proxy); `admit` decides which events are stored (a write policy);
    `max_results` caps the events one query returns (as public relays do).
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
    loan = LoopLoan() if database is not None or admit is not None else None
    if database is not None:
        builder = builder.database(database)
    if auth_writes:
        builder = builder.nip42(
            sdk.LocalRelayBuilderNip42(mode=sdk.LocalRelayBuilderNip42Mode.WRITE)
        )
    if admit is not None:
        builder = builder.write_policy(_WritePolicy(admit))
    if max_results is not None:
        builder = builder.max_filter_limit(max_results)
    relay = builder.build()
    try:
        await relay.run()
        await _wait_listening(host, port, 5.0)
    except (Exception, asyncio.CancelledError) as exc:
        relay.shutdown()
        if loan is not None:
            loan.release()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise RelayStartError(f"cannot start a relay on {host}:{port}: {exc}") from exc
    url = f"ws://{host}:{port}" if ":" not in host else f"ws://[{host}]:{port}"
    logger.info("local relay listening on %s", url)
    return RunningRelay(url=url, host=host, port=port, relay=relay, loan=loan)


@contextlib.asynccontextmanager
async def local_relay(
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    notes_per_minute: int = DEFAULT_NOTES_PER_MINUTE,
    max_reqs: int = DEFAULT_MAX_REQS,
    database: sdk.NostrDatabase | None = None,
    max_results: int | None = None,
) -> AsyncIterator[RunningRelay]:
    """`async with local_relay() as relay:` a relay for the block's duration."""
    running = await start_relay(
        host,
        port,
        notes_per_minute=notes_per_minute,
        max_reqs=max_reqs,
        database=database,
        max_results=max_results,
    )
    try:
        yield running
    finally:
        running.shutdown()


async def has_recent(
    database: sdk.NostrDatabase, *, author: str, kinds: tuple[int, ...], since: int
) -> bool:
    """Does the relay's database hold an event of `kinds` by `author` created since `since`?"""
    try:
        flt = (
            sdk.Filter()
            .kinds([sdk.Kind(k) for k in kinds])
            .authors([sdk.PublicKey.parse(author)])
            .since(sdk.Timestamp.from_secs(since))
            .limit(1)
        )
    except Exception:  # not a valid key
        return False
    events = await database.query(flt)
    return bool(events)


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
