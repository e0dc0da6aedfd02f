"""Invoice-paid-to-settled latency on the devnet: two daemons, real channels, real payments.

    .venv/bin/python bench/settle.py [--payments 20] [--amount-sats 1000]

Starts a devnet (btcd, shim, hub), a provider and a buyer daemon with ldk-node wallets, opens
channels through the hub, then pays N invoices one after the other and prints, per payment:
- pay → settled: from the buyer's `wallet.pay` call until it returns settled (the buyer's
  node reported PaymentSuccessful with the preimage);
- pay → received: until the provider's ledger shows the receipt (its node reported
  PaymentReceived and the daemon credited it).
Figures are wall-clock on the machine it runs on; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import latency_row

from autopilotd.client import RpcClient, locate
from autopilotd.devnet import Devnet

BIN = Path(sys.executable).parent


def start_daemon(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN / "autopilotd"), "run", "--home", str(home)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(home.parent / f"{home.name}.log").open("wb"),
    )
    manifest = home / "run" / "autopilotd.json"
    deadline = time.monotonic() + 60
    while not manifest.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{home.name} did not start; see {home.name}.log")
        time.sleep(0.05)
    return proc


async def call(home: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    async with RpcClient(locate(home=str(home))) as c:
        return await c.call(method, params or {})


async def wait_ready(home: Path) -> None:
    for _ in range(12):
        if (await call(home, "wait.until", {"condition": "wallet-ready", "timeout_s": 10}))["met"]:
            return
    raise SystemExit(f"{home.name}: the wallet never became ready")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--payments", type=int, default=20)
    ap.add_argument("--amount-sats", type=int, default=1000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autopilotd-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    async with Devnet(root / "devnet") as devnet:
        info = devnet.info
        env = {
            "AUTOPILOTD_WALLET_NETWORK": "regtest",
            "AUTOPILOTD_WALLET_BITCOIND_RPC_URL": (
                f"http://{info.shim_user}:{info.shim_password}@{info.shim_host}:{info.shim_port}"
            ),
            "AUTOPILOTD_WALLET_TRUSTED_PEERS_NO_RESERVE": info.hub_node_id,
            "AUTOPILOTD_WALLET_PEERS": f"{info.hub_node_id}@{info.hub_address}",
        }
        provider, buyer = root / "provider", root / "buyer"
        try:
            for home in (provider, buyer):
                procs.append(start_daemon(home, env))
                await wait_ready(home)
            for home, push in ((provider, 0), (buyer, 800_000)):
                status = await call(home, "wallet.status")
                await devnet.client.open_channel(
                    status["node_id"], status["listening"], 1_000_000, push
                )
            for home in (provider, buyer):
                for _ in range(120):
                    balance = await call(home, "wallet.balance")
                    if balance["spendable_sats"] + balance["receivable_sats"] > 0:
                        break
                    await asyncio.sleep(0.5)
            settled: list[float] = []
            received: list[float] = []
            for i in range(args.payments):
                inv = await call(
                    provider,
                    "wallet.receive",
                    {"amount_sats": args.amount_sats, "description": f"bench {i}"},
                )
                started = time.perf_counter()
                result = await call(buyer, "wallet.pay", {"bolt11": inv["bolt11"]})
                settled.append(time.perf_counter() - started)
                if result["status"] != "succeeded":
                    raise SystemExit(f"payment {i} did not settle: {result}")
                while True:
                    row = await call(provider, "wallet.history", {"limit": 1})
                    if (
                        row["payments"]
                        and row["payments"][0]["payment_hash"] == inv["payment_hash"]
                    ):
                        break
                    await asyncio.sleep(0.005)
                received.append(time.perf_counter() - started)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(60)

    for r in (
        latency_row("pay → settled (buyer)", settled),
        latency_row("pay → received (provider)", received),
    ):
        print(json.dumps(r, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
