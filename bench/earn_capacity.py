"""Paid jobs per minute at provider_max_inflight 1, 4 and 8, everything real.

    .venv/bin/python bench/earn_capacity.py [--seconds 60] [--max-tokens 64]

Brings up the demo network (devnet, relay, Nexus, your provider with psionic, a buyer),
goes online, waits for the first paid job (the provider's channel is open then), and for
each level N sets the provider's `provider_max_inflight` to N and runs N buyer lanes at
once for `--seconds`: each lane submits a 5050 job, follows it to `done`, and submits the
next. A job counts when the buyer's request is done: the result received and the payment
settled in the buyer's wallet (the provider's earnings are bound to the same payment hash).
The Nexus's starter jobs run beside them, as on a real provider; they are not counted. The
provider lets one buyer send 600 requests a minute (`provider_buyer_rate_per_min`; the
default 12 would measure that limit, not the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from autopilotd.demo import PRICE_SATS, _call, _go_online, demo_network

LEVELS = (1, 4, 8)


async def lane(buyer: Path, n: int, until: float, done: list[float]) -> None:
    i = 0
    while time.monotonic() < until:
        i += 1
        req = await _call(
            buyer,
            "buy.submit",
            {
                "prompt": f"Write a short story about the sea, lane {n}, part {i}.",
                "budget_sats": PRICE_SATS * 2,
                "max_tokens": ARGS.max_tokens,
                "timeout_s": 120,
            },
        )
        while True:
            row = await _call(buyer, "buy.wait", {"request_id": req["request_id"], "timeout_s": 20})
            if row["status"] in ("done", "failed", "expired"):
                break
        if row["status"] == "done":
            done.append(time.monotonic())


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="autopilotd-bench-")) / "net"
    env = {"AUTOPILOTD_PROVIDER_BUYER_RATE_PER_MIN": "600"}
    async with demo_network(root, provider_env=env) as net:
        await _go_online(net.provider)
        while not (
            await _call(net.provider, "wait.until", {"condition": "job-paid", "timeout_s": 20})
        )["met"]:
            pass
        single = None
        for n in LEVELS:
            await _call(net.provider, "settings.update", {"provider_max_inflight": n})
            done: list[float] = []
            started = time.monotonic()
            until = started + ARGS.seconds
            async with asyncio.TaskGroup() as tg:
                for k in range(n):
                    tg.create_task(lane(net.buyer, k, until, done))
            elapsed = (max(done) if done else time.monotonic()) - started
            per_minute = len(done) * 60 / elapsed if elapsed > 0 else 0.0
            single = single or per_minute
            print(
                json.dumps(
                    {
                        "max_inflight": n,
                        "jobs_paid": len(done),
                        "seconds": round(elapsed, 1),
                        "paid_jobs_per_minute": round(per_minute, 1),
                        "vs_1": round(per_minute / single, 2) if single else None,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ARGS = ap.parse_args()
    sys.exit(asyncio.run(main()))
