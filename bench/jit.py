"""JIT onboarding on the devnet: a new wallet's first payment over a channel the LSP opens.

    .venv/bin/python bench/jit.py [--runs 5] [--amount-sats 21]

Each run starts a brand-new ldk-node (no coins, no channel, the devnet's LSP configured, as
the daemon builds it) and measures, on one clock:

  invoice   receive_via_jit_channel: the LSP's fee menu fetched, a channel bought, the
            invoice made
  channel   the payer sends → the new wallet's ChannelReady (the LSP opened it, zero-conf)
  received  ChannelReady → the wallet's PaymentReceived (the forward over the new channel)

and, side by side in the same run, the baseline: the next payment of the same amount over the
channel that now exists (send → PaymentReceived). The payer is a node with a channel from the
LSP, as the Nexus's treasury and the demo's buyer are.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from autopilotd.adapters.ldk_node import ChainSource, NodeSettings, build_node
from autopilotd.devnet import Devnet
from autopilotd.devnet.lsp import LspTerms
from autopilotd.loopback import free_port


async def until_event(node: Any, names: set[str]) -> dict[str, float]:
    """Consume the node's events until each of `names` was seen; when each came."""
    seen: dict[str, float] = {}
    while not names <= seen.keys():
        event = await node.next_event_async()
        seen.setdefault(type(event).__name__.removeprefix("Event."), time.monotonic())
        await asyncio.to_thread(node.event_handled)
    return seen


async def run_once(
    root: Path, chain: ChainSource, lsp: str, payer: Any, amount_msat: int, k: int
) -> dict[str, float]:
    import ldk_node as ldk

    client = build_node(NodeSettings("regtest", root / f"client-{k}", free_port(), chain, lsp=lsp))
    await asyncio.to_thread(client.start)
    try:
        text = ldk.Bolt11InvoiceDescription.DIRECT(description=f"bench {k}")
        bolt = client.bolt11_payment()
        t0 = time.monotonic()
        invoice = await asyncio.to_thread(
            bolt.receive_via_jit_channel, amount_msat, text, 600, 10_000_000
        )
        t1 = time.monotonic()
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            waiting = tg.create_task(until_event(client, {"CHANNEL_READY", "PAYMENT_RECEIVED"}))
            t2 = time.monotonic()
            await asyncio.to_thread(payer.bolt11_payment().send, invoice, None)
        seen = waiting.result()
        first = {
            "invoice": t1 - t0,
            "channel": seen["CHANNEL_READY"] - t2,
            "received": seen["PAYMENT_RECEIVED"] - seen["CHANNEL_READY"],
            "total": seen["PAYMENT_RECEIVED"] - t0,
        }
        # The baseline: the same amount over the channel the first payment opened.
        t3 = time.monotonic()
        again = await asyncio.to_thread(bolt.receive, amount_msat, text, 600)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            waiting = tg.create_task(until_event(client, {"PAYMENT_RECEIVED"}))
            await asyncio.to_thread(payer.bolt11_payment().send, again, None)
        seen = waiting.result()
        first["baseline"] = seen["PAYMENT_RECEIVED"] - t3
        return first
    finally:
        await asyncio.to_thread(client.stop)


async def drain(node: Any) -> None:
    while True:
        await node.next_event_async()
        await asyncio.to_thread(node.event_handled)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--amount-sats", type=int, default=21)
    args = parser.parse_args()
    # Kept afterwards: ldk-node's threads may still log into it as the process exits.
    root = Path(tempfile.mkdtemp(prefix="bench-jit-"))
    async with Devnet(root / "devnet") as net:
        info = net.info
        c = net.chain_source
        chain = ChainSource(c.host, c.port, c.user, c.password)
        port = free_port()
        payer = build_node(
            NodeSettings(
                "regtest",
                root / "payer",
                port,
                chain,
                trusted_peers_no_reserve=(info.lsp_node_id,),
            )
        )
        await asyncio.to_thread(payer.start)
        async with asyncio.TaskGroup() as tg:
            draining = tg.create_task(drain(payer))
            await net.client.lsp_open_channel(
                str(payer.node_id()), f"127.0.0.1:{port}", 2_000_000, 1_000_000
            )
            while not any(ch.is_usable for ch in payer.list_channels()):
                await asyncio.sleep(0.1)
            rows = [
                await run_once(root, chain, info.lsp, payer, args.amount_sats * 1000, k)
                for k in range(args.runs)
            ]
            draining.cancel()
        await asyncio.to_thread(payer.stop)
    terms = LspTerms()
    print(
        f"JIT onboarding, {args.runs} runs, {args.amount_sats} sats each; the LSP's terms: "
        f"{terms.fee_ppm / 1e4:g} % (at least {terms.min_fee_msat / 1000:g} sats), "
        f"{terms.over_provisioning_ppm / 1e6:g}x over-provisioned"
    )
    for name in ("invoice", "channel", "received", "total", "baseline"):
        values = [r[name] for r in rows]
        print(
            f"  {name:<9} median {statistics.median(values) * 1000:7.0f} ms   "
            f"runs {', '.join(f'{v * 1000:.0f}' for v in values)} ms"
        )
    ratio = statistics.median(r["total"] for r in rows) / statistics.median(
        r["baseline"] for r in rows
    )
    print(f"  first payment (invoice to received) / a payment over the channel: {ratio:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
