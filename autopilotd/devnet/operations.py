"""What the devnet can do while it runs: mine, fund, open channels from the hub or the LSP.

The supervisor owns one `DevnetOperations`; the control API and nothing else calls it.
"""

import asyncio
import logging
from typing import Any

from autopilotd.devnet.coins import COINBASE_MATURITY, Faucet
from autopilotd.devnet.hub import HubError, HubNode
from autopilotd.devnet.lsp import LspProcess
from autopilotd.devnet.rpc import BtcdRpc

logger = logging.getLogger(__name__)

# LDK's default minimum depth for a channel funding transaction.
CHANNEL_CONFIRMATIONS = 6
# Blocks mined at first start: 20 block rewards mature past the coinbase maturity.
INITIAL_BLOCKS = COINBASE_MATURITY + 20
# What the hub keeps on chain to open channels, spread over several outputs so that
# consecutive opens do not wait on each other's change.
HUB_FUNDING_OUTPUTS = 5
HUB_FUNDING_OUTPUT_SATS = 200_000_000
HUB_MIN_SPENDABLE_SATS = 100_000_000
# The LSP's coins: one output per just-in-time channel it may open in a run, plus the
# channels it opens to payers.
LSP_FUNDING_OUTPUTS = 10
LSP_FUNDING_OUTPUT_SATS = 50_000_000


class DevnetOperations:
    """Mining, funding and channel opening on a running devnet."""

    def __init__(self, rpc: BtcdRpc, faucet: Faucet, hub: HubNode, lsp: LspProcess) -> None:
        self._rpc = rpc
        self._faucet = faucet
        self._hub = hub
        self._lsp = lsp
        self._open_lock = asyncio.Lock()

    async def height(self) -> int:
        """The height of btcd's best chain."""
        height: int = await self._rpc.call("getblockcount")
        return height

    async def mine(self, blocks: int) -> list[str]:
        """Mine `blocks` blocks (rewards to the devnet's miner key); returns their hashes."""
        if not 1 <= blocks <= 1000:
            raise ValueError("blocks must be between 1 and 1000")
        hashes: list[str] = await self._rpc.call("generate", blocks)
        logger.info("mined %d blocks, tip %s", blocks, hashes[-1])
        return hashes

    async def fund(self, address: str, sats: int, confirmations: int = 1) -> str:
        """Pay `sats` to `address` from mature block rewards, then mine `confirmations`."""
        txid = await self._faucet.pay([(address, sats)])
        if confirmations:
            await self.mine(confirmations)
        return txid

    async def reorg(self, depth: int) -> dict[str, Any]:
        """Replace the last `depth` blocks with a longer branch (`depth + 1` new blocks).

        The new branch carries a fresh faucet transaction so its blocks differ from the
        invalidated ones (btcd would otherwise mine the very same, now invalid, blocks).
        Transactions confirmed only in the old branch may drop out of the chain.
        """
        tip_height = await self.height()
        if not 1 <= depth <= min(tip_height, 100):
            raise ValueError("depth must be between 1 and min(height, 100)")
        old_tip: str = await self._rpc.call("getbestblockhash")
        fork_child: str = await self._rpc.call("getblockhash", tip_height - depth + 1)
        await self._rpc.call("invalidateblock", fork_child)
        await self._faucet.pay([(self._faucet.address, 10_000)])
        hashes = await self.mine(depth + 1)
        logger.info("reorg: %d blocks replaced, new tip %s", depth, hashes[-1])
        return {"old_tip": old_tip, "new_tip": hashes[-1], "height": await self.height()}

    async def ensure_hub_funds(self) -> None:
        """Give the hub on-chain coins to open channels with, if it is running low."""
        await self._hub.sync()
        balances = await self._hub.balances()
        if balances["spendable_onchain_sats"] >= HUB_MIN_SPENDABLE_SATS:
            return
        outputs = [
            (await self._hub.new_onchain_address(), HUB_FUNDING_OUTPUT_SATS)
            for _ in range(HUB_FUNDING_OUTPUTS)
        ]
        await self._faucet.pay(outputs)
        await self.mine(1)
        await self._hub.sync()
        balances = await self._hub.balances()
        logger.info("hub funded: %d sats spendable", balances["spendable_onchain_sats"])

    async def ensure_lsp_funds(self) -> None:
        """Give the LSP on-chain coins for the channels it opens, in separate outputs."""
        await self._lsp.sync()
        if (await self._lsp.balances())["spendable_onchain_sats"] > 0:
            return
        outputs = [
            (await self._lsp.new_onchain_address(), LSP_FUNDING_OUTPUT_SATS)
            for _ in range(LSP_FUNDING_OUTPUTS)
        ]
        await self._faucet.pay(outputs)
        await self.mine(1)
        await self._lsp.sync()
        balances = await self._lsp.balances()
        logger.info("LSP funded: %d sats spendable", balances["spendable_onchain_sats"])

    async def lsp_open_channel(
        self, node_id: str, address: str, sats: int, push_sats: int = 0, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Open a channel from the LSP to a participant (a payer) and mine it until usable.

        A payer with a channel from the LSP reaches the LSP's clients over their
        just-in-time channels: the client's invoice names the LSP as its last hop.
        """
        if push_sats >= sats:
            raise ValueError("push_sats must be below the channel size")
        async with self._open_lock:
            user_channel_id = await self._lsp.open_channel(node_id, address, sats, push_sats)
            funding = await self._wait_lsp_channel(user_channel_id, "funding_txid", timeout_s)
            funding_txid = str(funding["funding_txid"])
            await self._wait_in_mempool(funding_txid, timeout_s)
            await self.mine(CHANNEL_CONFIRMATIONS)
            await self._lsp.sync()
            await self._wait_lsp_channel(user_channel_id, "usable", timeout_s)
        logger.info("LSP channel %s to %s is ready", user_channel_id, node_id)
        return {
            "user_channel_id": user_channel_id,
            "funding_txid": funding_txid,
            "channel_sats": sats,
            "push_sats": push_sats,
            "hub_node_id": self._lsp.node_id,
        }

    async def _wait_lsp_channel(
        self, user_channel_id: str, field: str, timeout_s: float
    ) -> dict[str, Any]:
        """The LSP's channel once `field` is set (the LSP reports no events: poll it)."""
        async with asyncio.timeout(timeout_s):
            while True:
                for channel in await self._lsp.channels():
                    if channel["user_channel_id"] == user_channel_id and channel.get(field):
                        return channel
                await asyncio.sleep(0.1)

    async def open_channel(
        self, node_id: str, address: str, sats: int, push_sats: int = 0, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Open a channel from the hub to a participant and mine it until both sides use it.

        The participant must be running and listening at `address`. Opens are serialized so
        each funding transaction is confirmed before the next one picks its coins.
        """
        if push_sats >= sats:
            raise ValueError("push_sats must be below the channel size")
        async with self._open_lock:
            user_channel_id = await self._hub.open_channel(node_id, address, sats, push_sats)
            funding_txid = await self._hub.wait_channel_pending(user_channel_id, timeout_s)
            await self._wait_in_mempool(funding_txid, timeout_s)
            await self.mine(CHANNEL_CONFIRMATIONS)
            await self._hub.sync()
            await self._hub.wait_channel_ready(user_channel_id, timeout_s)
        logger.info("channel %s to %s is ready", user_channel_id, node_id)
        return {
            "user_channel_id": user_channel_id,
            "funding_txid": funding_txid,
            "channel_sats": sats,
            "push_sats": push_sats,
            "hub_node_id": self._hub.node_id,
        }

    async def _wait_in_mempool(self, txid: str, timeout_s: float) -> None:
        """The node broadcasts from a background task; wait until btcd has the transaction."""
        async with asyncio.timeout(timeout_s):
            while True:
                if txid in await self._rpc.call("getrawmempool"):
                    return
                await asyncio.sleep(0.1)

    async def status(self) -> dict[str, Any]:
        """Chain height, the hub's identity, balances and channels."""
        return {
            "height": await self.height(),
            "mempool": len(await self._rpc.call("getrawmempool")),
            "hub": {
                "node_id": self._hub.node_id,
                "address": self._hub.address,
                "balances": await self._hub.balances(),
                "channels": await self._hub.channels(),
            },
            "lsp": {
                "node_id": self._lsp.node_id,
                "address": self._lsp.address,
                "balances": await self._lsp.balances(),
                "channels": await self._lsp.channels(),
            },
        }

    async def hub_invoice(self, amount_msat: int, description: str, expiry_s: int) -> str:
        """A BOLT11 invoice from the hub."""
        return await self._hub.create_invoice(amount_msat, description, expiry_s)

    async def hub_payment(self, payment_hash: str) -> dict[str, Any] | None:
        """The hub's record of the payment with this hash (e.g. whether its invoice is paid)."""
        return await self._hub.payment(payment_hash)

    async def hub_pay(self, bolt11: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Pay an invoice from the hub and wait for the result."""
        result = await self._hub.pay_invoice(bolt11, timeout_s)
        if not result["succeeded"]:
            raise HubError(f"payment failed: {result['reason']}")
        return result
