"""Earn-loop latencies on the devnet and a local relay, everything real (issue targets in docs).

    .venv/bin/python bench/earn.py [--jobs 10]

Brings up the demo network (devnet, relay, provider with psionic, buyer) and measures:
- Go Online → first sat: a buyer loop is already sending requests; from the `provider.online`
  call until the provider's wallet has a settled payment bound to a job;
- request → processing: from the buyer publishing a request until the provider publishes its
  kind 7000 `processing` (the provider's `provider.running` log line, same machine clock);
- request → result: until the buyer receives the result (a 5050 job with max_tokens 128).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import latency_row

from autopilotd.demo import BIN, PRICE_SATS, _call, _go_online, demo_network


def events(home: Path) -> list[dict[str, Any]]:
    lines = (home / "logs" / "latest.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "domain_event" in r]


def first(evts: list[dict[str, Any]], name: str, rid: str) -> float | None:
    return next(
        (e["ts"] for e in evts if e["domain_event"] == name and e.get("request_id") == rid), None
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autopilotd-bench-")) / "net"
    async with demo_network(root) as net:
        loop = await net.procs.start(
            "buyer-loop",
            str(BIN / "autopilotd"),
            "buyer",
            "--home",
            str(net.buyer),
            "--budget-sats",
            str(PRICE_SATS * 2),
            "--interval",
            "0.5",
            "--timeout",
            "5",  # a waiting buyer re-asks soon; requests seen while offline stay previews
            "--max-tokens",
            "16",
        )
        await asyncio.sleep(3)  # the buyer is waiting: requests arrive while offline
        started = time.perf_counter()
        await _go_online(net.provider)
        while not (
            await _call(net.provider, "wait.until", {"condition": "job-paid", "timeout_s": 20})
        )["met"]:
            pass
        first_sat = time.perf_counter() - started
        loop.terminate()
        await loop.wait()
        await asyncio.sleep(2)
        rids = []
        for i in range(args.jobs):
            req = await _call(
                net.buyer,
                "buy.submit",
                {
                    "prompt": f"Write a long story about the sea, part {i}.",
                    "budget_sats": PRICE_SATS * 2,
                    "max_tokens": 128,
                    "timeout_s": 60,
                },
            )
            rid = req["request_id"]
            while (await _call(net.buyer, "buy.wait", {"request_id": rid, "timeout_s": 20}))[
                "status"
            ] not in ("done", "failed", "expired"):
                pass
            rids.append(rid)
        buyer_events, provider_events = events(net.buyer), events(net.provider)
        processing, result = [], []
        for rid in rids:
            published = next(
                (
                    e.get("sent_at", e["ts"])
                    for e in buyer_events
                    if e["domain_event"] == "buyer.request_published" and e.get("request_id") == rid
                ),
                None,
            )
            running = first(provider_events, "provider.running", rid)
            received = first(buyer_events, "buyer.result_received", rid)
            if published and running:
                processing.append(running - published)
            if published and received:
                result.append(received - published)
    print(
        json.dumps(
            {"measure": "Go Online → first sat (buyer waiting)", "seconds": round(first_sat, 2)},
            ensure_ascii=False,
        )
    )
    print(json.dumps(latency_row("request → processing", processing), ensure_ascii=False))
    print(
        json.dumps(
            latency_row("request → result (5050, max_tokens 128)", result), ensure_ascii=False
        )
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
