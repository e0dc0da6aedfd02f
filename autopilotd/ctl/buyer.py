"""`autopilotd buyer`: a headless buying loop over a running daemon's JSON-RPC.

It uses that daemon's own wallet (through `buy.submit`), so every payment has the wallet's
guarantees. Each request is followed until it is done, failed or expired, and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from typing import Any

from autopilotd.client import RpcClient, RpcError, locate
from autopilotd.errors import AutopilotError

PROMPTS = (
    "Write one sentence about the sea.",
    "Name three colours.",
    "Say hello in French.",
    "What is two plus two?",
    "Give a short tip for sleeping well.",
)


async def follow(client: RpcClient, request_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s + 30
    while True:
        row: dict[str, Any] = await client.call(
            "buy.wait", {"request_id": request_id, "timeout_s": 20}
        )
        if row["status"] in ("done", "failed", "expired") or time.monotonic() > deadline:
            return row


async def run(args: argparse.Namespace) -> int:
    endpoint = locate(home=args.home, manifest=args.manifest)
    failures = 0
    async with RpcClient(endpoint) as client:
        for n in itertools.count(1):
            if args.count and n > args.count:
                break
            prompt = args.prompt or PROMPTS[(n - 1) % len(PROMPTS)]
            try:
                request = await client.call(
                    "buy.submit",
                    {
                        "prompt": prompt,
                        "budget_sats": args.budget_sats,
                        "timeout_s": args.timeout,
                        "max_tokens": args.max_tokens,
                    },
                )
                row = await follow(client, request["request_id"], args.timeout)
            except RpcError as exc:
                row = {"status": "failed", "reason": exc.message, "request_id": "-"}
            ok = row["status"] == "done"
            failures += not ok
            detail = (row.get("result") or "").replace("\n", " ")[:60] if ok else row.get("reason")
            print(f"[{n}] {row['status']:8} {row['request_id'][:12]} {detail}", flush=True)
            if not ok and args.fail_fast:
                return 1
            if not args.count or n < args.count:
                await asyncio.sleep(args.interval)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="autopilotd buyer", description=__doc__)
    p.add_argument("--home")
    p.add_argument("--manifest")
    p.add_argument("--budget-sats", type=int, default=20, help="most one request may cost")
    p.add_argument("--count", type=int, default=0, help="requests to send (0: until stopped)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between requests")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt", help="the same prompt every time (default: a small rotation)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first unpaid request")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except AutopilotError as exc:
        print(f"autopilotd buyer: {exc.message}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
