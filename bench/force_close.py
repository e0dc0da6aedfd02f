"""How often a crash on the pay path costs the buyer its channel (LDK force-closes it).

    .venv/bin/python bench/force_close.py [--kills 5] [--how kill|term|outside] [--points a,b]

A devnet, a provider and a buyer as real daemons (as in tests/wallet). For each named crash
point of the pay path, `--kills` times: the buyer is started with `AUTOPILOTD_CRASH_AT` at
that point and pays the provider; it dies there (`--how kill`: exit 137, as `kill -9` leaves
it) or is asked to stop there (`--how term`: a SIGTERM at that exact point); with `--how
outside` no crash point is set and the buyer is SIGKILLed at a random moment of the 200 ms
after it starts the payment, as a crash from outside the daemon would come. It is restarted,
and ldk-node's log says whether the channel survived. A force-closed channel is counted and
a new one opened, then the user's retry settles the payment, as the crash test does.

A force-close is a `ChannelClosed` that ldk-node logs after the restart; its reason is
printed (after a kill it is LDK's "ChannelManager read from disk was stale compared to
ChannelMonitor(s)", rust-lightning issue 4286).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

# The tests' devnet harness: daemons as real processes, as the crash test runs them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.devnet import Net, WalletDaemon

from autopilotd.devnet import Devnet

CHANNEL_SATS = 1_000_000
PUSH_SATS = 600_000
RANDOM = random.Random(4286)
# `--how outside`: the kill comes 0–200 ms after the daemon logs `wallet.payment_started`,
# the moment before it hands the payment to the node.
OUTSIDE_WINDOW_S = 0.2
POINTS = [
    "pay.before_intent",
    "pay.after_intent",
    "pay.after_node_send",
    "pay.after_success_before_ledger",
    "wallet.before_event_ack",
]


async def ensure_channel(net: Net, buyer: WalletDaemon) -> bool:
    """Make the buyer's channel usable again; True if a new one had to be opened."""
    try:
        buyer.wait_usable(timeout=20)
        return False
    except AssertionError:
        await net.channel(buyer, CHANNEL_SATS, PUSH_SATS)
        buyer.wait_usable()
        return True


async def cycle(
    net: Net, provider: WalletDaemon, buyer: WalletDaemon, point: str, how: str
) -> tuple[list[str], bool]:
    """One crash at `point`; the closes ldk-node logged after the restart, and whether a
    channel was reopened."""
    inv = provider.ctl_json("wallet.receive", "--amount-sats", "500")
    buyer.stop()
    if how == "outside":
        # No crash point: a SIGKILL from outside at a random moment of the payment.
        buyer.start()
        buyer.wait_usable()
        session_log = buyer.home / "logs" / "latest.jsonl"
        started = '"wallet.payment_started","event_id"'
        async with asyncio.TaskGroup() as tg:
            tg.create_task(asyncio.to_thread(buyer.ctl, "wallet.pay", "--bolt11", inv["bolt11"]))
            while inv["payment_hash"] not in "".join(
                line for line in session_log.read_text().splitlines() if started in line
            ):
                await asyncio.sleep(0.002)
            await asyncio.sleep(RANDOM.uniform(0, OUTSIDE_WINDOW_S))
            assert buyer.proc is not None
            buyer.proc.kill()
        buyer.wait_exit()
    else:
        buyer.start(crash_at=point, crash_how=how)
        buyer.wait_usable()
        buyer.ctl("--json", "wallet.pay", "--bolt11", inv["bolt11"])
        rc = buyer.wait_exit()
        expected = 137 if how == "kill" else 0
        assert rc == expected, f"{point}: exit {rc}, expected {expected}"
    offset = buyer.ldk_log_size()
    buyer.start()
    reopened = await ensure_channel(net, buyer)
    retry = buyer.ctl_json("wallet.pay", "--bolt11", inv["bolt11"])
    assert retry["status"] in ("succeeded", "pending", "unknown"), retry
    return buyer.closes_since(offset), reopened


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=5, help="crashes per point")
    parser.add_argument("--how", choices=("kill", "term", "outside"), default="kill")
    parser.add_argument("--points", default=",".join(POINTS))
    args = parser.parse_args()
    points = [p for p in args.points.split(",") if p] if args.how != "outside" else ["outside"]
    root = Path(tempfile.mkdtemp(prefix="bench-force-close-"))
    rows: list[tuple[str, int, int, float]] = []
    reasons: dict[str, int] = {}
    async with Devnet(root / "devnet") as devnet:
        net = Net(devnet, devnet.client, root)
        try:
            provider = net.daemon("provider").start()
            buyer = net.daemon("buyer").start()
            await net.channel(provider, CHANNEL_SATS, 0)
            await net.channel(buyer, CHANNEL_SATS, PUSH_SATS)
            for point in points:
                closes = 0
                t0 = time.monotonic()
                for _ in range(args.kills):
                    closed, _ = await cycle(net, provider, buyer, point, args.how)
                    closes += bool(closed)
                    for line in closed:
                        reason = line.split("closed due to:", 1)[-1].strip()
                        reasons[reason] = reasons.get(reason, 0) + 1
                per_cycle = (time.monotonic() - t0) / max(args.kills, 1)
                rows.append((point, args.kills, closes, per_cycle))
                print(f"  {point}: {closes}/{args.kills} force-closed", flush=True)
        finally:
            for d in net.daemons:
                d.stop()
    verb = {
        "kill": "a kill -9 at each crash point",
        "term": "a SIGTERM at each crash point",
        "outside": f"a SIGKILL 0–{OUTSIDE_WINDOW_S * 1000:.0f} ms after wallet.payment_started",
    }[args.how]
    print(f"\nforce-closes after {verb} (files kept in {root})")
    print(f"{'point':<34} {'crashes':>7} {'closed':>6} {'rate':>6} {'s/cycle':>8}")
    for point, kills, closes, per_cycle in rows:
        rate = closes / kills if kills else 0.0
        print(f"{point:<34} {kills:>7} {closes:>6} {rate:>6.0%} {per_cycle:>8.1f}")
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  {n} × {reason}")


if __name__ == "__main__":
    asyncio.run(main())
