"""An ldk-node following the devnet's chain through a reorg (block sync via the shim)."""

import asyncio
import time
from pathlib import Path

from autopilotd.devnet import Devnet

from .participant import Participant, running_participant


async def _wait_best_block(who: Participant, block_hash: str, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        best = (await who.call(who.node.status)).current_best_block
        if str(best.block_hash) == block_hash:
            return int(best.height)
        assert time.monotonic() < deadline, f"node stuck at {best.height} {best.block_hash}"
        await asyncio.sleep(0.2)


async def test_node_follows_a_reorg(tmp_path: Path) -> None:
    async with (
        Devnet(tmp_path / "devnet") as net,
        running_participant(tmp_path / "node", net.chain_source, "node") as node,
    ):
        hashes = await net.client.mine(3)
        height = await _wait_best_block(node, hashes[-1])
        reorg = await net.client.reorg(2)
        assert reorg["old_tip"] == hashes[-1]
        assert reorg["height"] == height + 1
        assert await _wait_best_block(node, reorg["new_tip"]) == height + 1
        # The node keeps working on the new branch: on-chain funds arrive and confirm.
        address = await node.onchain_address()
        await net.client.fund(address, 50_000)
        await node.call(node.node.sync_wallets)
        balances = await node.call(node.node.list_balances)
        assert balances.total_onchain_balance_sats == 50_000
