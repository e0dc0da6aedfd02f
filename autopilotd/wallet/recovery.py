"""Channel recovery: a restored wallet takes back its share of the channels it lost.

A restore brings back the keys, not the channels' state. Each peer then closes its channel on
chain (it does so when the restored node connects and does not know the channel), paying this
wallet's share to a key derived from the seed alone (wallet/sweep.py). ldk-node 0.7 cannot spend
that output without the lost state; this service finds it and sweeps it to an address of the
wallet, where it becomes ordinary on-chain balance.

- **Scan.** Every `poll_s` it reads the blocks it has not read yet, from `lookback` blocks
  before the chain tip it first saw (closes from before the restore) to the tip, and records
  every output paying one of the seed's 2,000 possible scripts, with the block read, in one
  transaction.
- **Sweep.** An output with a confirmation (an anchor output waits one block) is spent whole
  to a new address of the wallet, less a fee at `fee_rate` sat/vB. The signed transaction is
  recorded (`sweeping`) before it is sent, so a crash sends the same transaction again, never
  a second one; `swept` once the chain source took it, `confirmed` once a block holds it.
  One too small to pay its fee is left and shown as `too_small`.
- **Only what is true.** `recovered_sats` counts confirmed sweeps only; the wallet's balance
  shows the coins when its own sync sees them.

Runs only for a wallet whose words were restored, over a bitcoind RPC chain source (the one
that can read whole blocks). Owns the `recovery` section.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from embit.script import address_to_scriptpubkey

from autopilotd.blocking import in_daemon_thread
from autopilotd.errors import NotReady
from autopilotd.ports.chain import ChainError, ChainReader
from autopilotd.ports.lightning import NodeError
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import RecoverySection
from autopilotd.runtime.state import SectionWriter
from autopilotd.store.recovery import Recoveries, Recovery
from autopilotd.wallet.seed import read_seed, seed_path
from autopilotd.wallet.service import Wallet
from autopilotd.wallet.sweep import PaymentScript, payment_scripts, sweep

logger = logging.getLogger(__name__)

POLL_S = 5.0
LOOKBACK_BLOCKS = 2016
"""How far before the first tip seen the scan starts: closes made before the restore (about
two weeks of blocks)."""
FEE_RATE_SAT_VB = 2


class ChannelRecovery:
    name = "recovery"

    def __init__(
        self,
        *,
        wallet: Wallet,
        chain: ChainReader,
        recoveries: Recoveries,
        writer: SectionWriter[RecoverySection],
        events: EventBus,
        data_dir: Path,
        poll_s: float = POLL_S,
        lookback: int = LOOKBACK_BLOCKS,
        fee_rate: int = FEE_RATE_SAT_VB,
    ) -> None:
        self._wallet = wallet
        self._chain = chain
        self._recoveries = recoveries
        self._writer = writer
        self._events = events
        self._data_dir = data_dir
        self._poll_s = poll_s
        self._lookback = lookback
        self._fee_rate = fee_rate
        self._scripts: dict[str, PaymentScript] = {}

    def _words(self) -> str:
        return read_seed(seed_path(self._data_dir))

    async def run(self, ready: Callable[[], None]) -> None:
        self._scripts = await in_daemon_thread(
            lambda: payment_scripts(self._words()), name="recovery-keys"
        )
        self._writer.set(state="scanning", reason="looking for the old channels' closes")
        await self._show()
        ready()
        while True:
            try:
                await self.step()
                self._writer.set(last_error=None)
            except (ChainError, NodeError, NotReady) as exc:
                reason = exc.reason if isinstance(exc, NodeError) else str(exc)
                logger.warning("channel recovery: %s", reason)
                self._writer.set(last_error=reason)
            await asyncio.sleep(self._poll_s)

    async def step(self) -> None:
        """Read the new blocks, then move each found output one step towards confirmed."""
        tip = await self._chain.tip()
        scanned = await self._recoveries.scanned()
        start = max(0, tip - self._lookback) if scanned is None else scanned + 1
        for height in range(start, tip + 1):
            mine = [
                Recovery(
                    f"{o.txid}:{o.vout}",
                    self._scripts[o.script_hex].kind,
                    self._scripts[o.script_hex].index,
                    o.sats,
                    height,
                    "found",
                )
                for o in await self._chain.outputs(height)
                if o.script_hex in self._scripts
            ]
            await self._recoveries.found(height, mine)
            for r in mine:
                self._events.publish(
                    "wallet.channel_output_found", outpoint=r.outpoint, sats=r.sats
                )
        for r in await self._recoveries.all():
            await self._advance(r)
        self._writer.set(
            state="watching",
            reason="watching new blocks for the old channels' closes",
        )
        await self._show()

    async def _advance(self, r: Recovery) -> None:
        if r.status == "found":  # found in a block: confirmed once, so spendable now
            address = await self._wallet.require_node().onchain_address()
            txid, _, vout = r.outpoint.partition(":")
            try:
                made = sweep(
                    self._words(),
                    PaymentScript(r.kind, r.key_index),  # type: ignore[arg-type]
                    txid,
                    int(vout),
                    r.sats,
                    address_to_scriptpubkey(address).data,
                    self._fee_rate,
                )
            except ValueError as exc:
                await self._recoveries.update(r.outpoint, status="too_small", error=str(exc))
                return
            await self._recoveries.update(
                r.outpoint,
                status="sweeping",
                sweep_txid=made.txid,
                sweep_hex=made.hex,
                fee_sats=made.fee_sats,
                sent_sats=made.sent_sats,
            )
            r = dataclasses.replace(r, status="sweeping", sweep_txid=made.txid, sweep_hex=made.hex)
        if r.status == "sweeping" and r.sweep_hex is not None:
            try:
                await self._chain.broadcast(r.sweep_hex)
            except ChainError as exc:
                await self._recoveries.update(r.outpoint, error=str(exc))
                return
            await self._recoveries.update(r.outpoint, status="swept", error=None)
            self._events.publish(
                "wallet.channel_output_swept", outpoint=r.outpoint, txid=r.sweep_txid
            )
            return
        if r.status == "swept" and r.sweep_txid is not None:
            confirmations = await self._chain.confirmations(r.sweep_txid, 0)
            if confirmations is not None and confirmations >= 1:
                await self._recoveries.update(r.outpoint, status="confirmed")

    async def _show(self) -> None:
        rows = await self._recoveries.all()
        self._writer.set(
            scanned_height=await self._recoveries.scanned(),
            outputs=tuple(r.to_json() for r in rows),
            recovered_sats=sum(r.sent_sats or 0 for r in rows if r.status == "confirmed"),
        )
