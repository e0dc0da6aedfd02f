"""Starter lease cycles per second over HTTP, through the Nexus's aiohttp front.

    .venv/bin/python bench/nexus_leases.py [--sessions 50,200] [--seconds 10] [--interval S]
        [--baseline]

A server process (this script with `--serve`) runs the Nexus's front, session desk, starter
desk and payouts on a new SQLite database, wired as `autopilotd nexus` wires them, with these
stand-ins: every session is eligible (the real check is one LMDB query), the NIP-90 request
is signed but sent to no relay, and the treasury is stubbed: a bench-only route binds the
offer to a payment hash and marks it paid with the same repository steps the payouts take
after a settled payment (`paying`, then `completed` with its receipt). The rate limits are
lifted (they allow a session two polls a second). This process opens N sessions with NIP-98,
then runs N providers at once, each looping lease cycles:

    poll → ack → heartbeat → (treasury stub: paid) → complete

It prints cycles per second and each call's latency as the client sees it (median, 90th
percentile, max). Back to back (the default) measures throughput: every provider has one call
in flight, so a latency includes the wait behind the other N − 1 providers' calls. With
`--interval S` each provider starts a cycle every S seconds (N / S cycles per second offered),
which measures latency at a given load. `--baseline` runs each count twice in one run: with a
commit (an fsync) per write, as before group commit, then as the Nexus runs. Client and
server run on the same machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from figures import latency_row

from autopilotd.nexus.desk import DeskSettings, StarterDesk
from autopilotd.nexus.front import NexusFront
from autopilotd.nexus.migrations import NEXUS_MIGRATIONS
from autopilotd.nexus.payouts import Payouts
from autopilotd.nexus.repos import AuthSeen, Offer, Offers, Receipt, Receipts, Session, Sessions
from autopilotd.nexus.sessions import SessionDesk
from autopilotd.nexus.stats import PublicStats
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.nostr.nip98 import auth_header
from autopilotd.ports.payments import DecodedInvoice, PayOutcome
from autopilotd.ports.relays import IncomingEvent, SubscriptionFilter
from autopilotd.runtime.clock import SystemClock
from autopilotd.runtime.timers import Timers
from autopilotd.store import Store
from autopilotd.vocab import OfferStatus

CALLS = ("poll", "ack", "heartbeat", "paid (stub)", "complete")
UNLIMITED = (1_000_000, 1_000_000.0)

# -- the server ---------------------------------------------------------------------------------


class NoRelay:
    """The payouts' subscription: filters are set (as on each ack), no event ever comes."""

    name = "payouts"

    async def set_filters(self, filters: Sequence[SubscriptionFilter]) -> None:
        return None

    async def events(self) -> AsyncIterator[IncomingEvent]:
        await asyncio.Event().wait()
        yield  # type: ignore[misc]


class NoTreasury:
    """Never asked to pay: the bench route stands in for the paid invoice."""

    def check_ready(self) -> None:
        return None

    def decode_invoice(self, bolt11: str) -> DecodedInvoice:
        raise NotImplementedError

    async def pay_invoice(self, bolt11: str, *, description: str) -> PayOutcome:
        raise NotImplementedError


async def serve(group_commit: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    store = await Store.open(root / "nexus.sqlite3", NEXUS_MIGRATIONS, group_commit=group_commit)
    clock = SystemClock()
    identity = generate_identity()
    sessions, offers, receipts = Sessions(store), Offers(store), Receipts(store)

    async def eligible(session: Session) -> str | None:
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
            extra_tags=[["starter", offer.id]],
        )
        return event.id, event.json

    async def publish(offer: Offer) -> None:
        return None  # no relay

    desk = StarterDesk(
        offers=offers,
        receipts=receipts,
        settings=DeskSettings(dispatch_interval_s=0, reserve_cap_sats=10**9, daily_cap_sats=10**12),
        clock=clock,
        eligibility=eligible,
        funds=lambda price_msat, reserved_msat: None,
        sign=sign,
        publish=publish,
    )
    timers = Timers(clock)
    payouts = Payouts(
        subscription=NoRelay(),
        desk=desk,
        offers=offers,
        treasury=NoTreasury(),
        clock=clock,
        timers=timers,
    )
    stats = PublicStats(
        sessions=sessions,
        receipts=receipts,
        desk=desk,
        treasury=lambda: {"state": "ready", "reason": None},
        clock=clock,
    )
    front = NexusFront(
        sessions=SessionDesk(sessions=sessions, seen=AuthSeen(store), clock=clock),
        desk=desk,
        stats=stats,
        clock=clock,
        relay_url="ws://127.0.0.1:9",
        info={"name": "bench", "pubkey": identity.pubkey_hex},
        after_ack=payouts.follow,
        session_rate=UNLIMITED,
        poll_rate=UNLIMITED,
    )

    async def paid(request: web.Request) -> web.Response:
        """The treasury stub: what the payouts record for a lease whose invoice was paid."""
        body = await request.json()
        offer_id, payment_hash = body["offer_id"], body["payment_hash"]
        now = clock.now()
        paying = await offers.transition(
            offer_id,
            now,
            (OfferStatus.RUNNING,),
            status=OfferStatus.PAYING,
            payment_hash=payment_hash,
            bolt11=f"lnbcrt21000bench1{payment_hash}",
        )
        assert paying is not None, offer_id
        await offers.transition(
            offer_id,
            now,
            (OfferStatus.PAYING,),
            Receipt("offer.paid", pubkey=paying.provider, amount_msat=paying.price_msat),
            status=OfferStatus.COMPLETED,
            paid_at=now,
        )
        return web.json_response({})

    app = front.app()
    app.router.add_post("/bench/paid", paid)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            hosting = tg.create_task(timers.run())
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            print(f"http://127.0.0.1:{port}", flush=True)
            await stop.wait()
            hosting.cancel()
    finally:
        await runner.cleanup()
        await store.close()


# -- the providers ------------------------------------------------------------------------------


async def call(
    http: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(url, data=json.dumps(body or {}), headers=headers) as resp:
        answer: dict[str, Any] = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status} {answer}")
        return answer


async def open_session(http: aiohttp.ClientSession, url: str, identity: NostrIdentity) -> str:
    data = json.dumps({"bound_nostr_pubkey": identity.pubkey_hex}).encode()
    header = auth_header(identity, url + "/api/session", "POST", data)
    async with http.post(url + "/api/session", data=data, headers={"Authorization": header}) as r:
        answer = await r.json()
        assert r.status == 200, answer
        return str(answer["access_token"])


async def cycles(
    url: str, n: int, seconds: float, warmup: float, interval: float
) -> dict[str, Any]:
    timings: dict[str, list[float]] = {name: [] for name in CALLS}
    done = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        tokens = [await open_session(http, url, generate_identity()) for _ in range(n)]
        begin = time.perf_counter()
        measure_from, end = begin + warmup, begin + warmup + seconds

        async def timed(
            took: dict[str, float], name: str, target: str, token: str, body: Any = None
        ) -> Any:
            t0 = time.perf_counter()
            answer = await call(http, target, token, body)
            took[name] = time.perf_counter() - t0
            return answer

        async def provider(token: str) -> None:
            nonlocal done
            api = url + "/api/starter-demand"
            while (started := time.perf_counter()) < end:
                took: dict[str, float] = {}
                [offer] = (await timed(took, "poll", api + "/poll", token))["offers"]
                offer_api = f"{api}/offers/{offer['request_id']}"
                await timed(took, "ack", offer_api + "/ack", token)
                await timed(took, "heartbeat", offer_api + "/heartbeat", token)
                paid = {"offer_id": offer["request_id"], "payment_hash": secrets.token_hex(32)}
                await timed(took, "paid (stub)", url + "/bench/paid", token, paid)
                answer = await timed(
                    took,
                    "complete",
                    offer_api + "/complete",
                    token,
                    {"payment_hash": paid["payment_hash"]},
                )
                assert answer["offer"]["status"] == "completed"
                if measure_from <= time.perf_counter() <= end:  # cycles ending in the window
                    done += 1
                    for name, seconds_taken in took.items():
                        timings[name].append(seconds_taken)
                if interval:  # a paced provider starts its next cycle `interval` after this one
                    await asyncio.sleep(max(0.0, started + interval - time.perf_counter()))

        async def staggered(k: int, token: str) -> None:
            await asyncio.sleep(interval * k / n)  # paced providers start spread out
            await provider(token)

        await asyncio.gather(*(staggered(k, token) for k, token in enumerate(tokens)))
    return {
        "sessions": n,
        "cycles": done,
        "cycles_per_s": round(done / seconds, 1),
        "calls": [latency_row(name, timings[name]) for name in CALLS],
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="50,200", help="comma-separated session counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per count")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds from one cycle's start to the next per provider (0: back to back)",
    )
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also run each count with one commit per write (the store without group commit)",
    )
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--one-commit-per-write", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        await serve(group_commit=not args.one_commit_per_write)
        return
    runs = [(int(x), False) for x in args.sessions.split(",")]
    if args.baseline:
        runs = [run for n, _ in runs for run in ((n, True), (n, False))]
    for n, baseline in runs:
        flags = ["--one-commit-per-write"] if baseline else []
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", *flags], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            result = await cycles(url, n, args.seconds, args.warmup, args.interval)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        pacing = f", one cycle per {args.interval:g} s each" if args.interval else ", back to back"
        store = "one commit per write (baseline)" if baseline else "group commit"
        result["store"] = store
        print(
            f"\n{n} sessions{pacing}, {store}: {result['cycles']} cycles, "
            f"{result['cycles_per_s']} cycles/s"
        )
        print(f"{'call':<14}{'n':>7}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}")
        for row in result["calls"]:
            print(
                f"{row['measure']:<14}{row['n']:>7}{row['p50_ms']:>9}{row['p90_ms']:>9}"
                f"{row['max_ms']:>9}"
            )
        print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
