"""Cumulative proof of work per block, which btcd's `getblockheader` does not report.

LDK's block sync checks `chainwork == prev.chainwork + header.work()` exactly, so the shim
computes it the way Bitcoin Core does: the sum of every block's work back to genesis. Values
are cached by block hash; a hash always names the same ancestry, so the cache stays correct
across reorgs (a new branch just gets its own entries).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

_MAX_256 = (1 << 256) - 1

HeaderFetcher = Callable[[str], Awaitable[dict[str, Any]]]


def target_from_bits(bits: int) -> int:
    """The 256-bit target encoded in a header's compact `bits`."""
    exponent = bits >> 24
    mantissa = bits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def work_from_bits(bits: int) -> int:
    """Expected number of hashes for a block at this target (Core's GetBlockProof)."""
    target = target_from_bits(bits)
    if target <= 0:
        return 0
    return (~target & _MAX_256) // (target + 1) + 1


class ChainworkIndex:
    """Chainwork by block hash, filled on demand by walking `previousblockhash` links."""

    def __init__(self, fetch_header: HeaderFetcher) -> None:
        self._fetch_header = fetch_header
        self._chainwork: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def cached(self, block_hash: str) -> int | None:
        """The chainwork of `block_hash` if it is already known."""
        return self._chainwork.get(block_hash)

    async def chainwork(self, header: dict[str, Any]) -> int:
        """Chainwork of the block whose verbose header is `header`."""
        known = self._chainwork.get(header["hash"])
        if known is not None:
            return known
        async with self._lock:
            pending = [header]
            while True:
                prev = pending[-1].get("previousblockhash")
                if not prev or prev in self._chainwork:
                    break
                pending.append(await self._fetch_header(prev))
            prev = pending[-1].get("previousblockhash")
            total = self._chainwork[prev] if prev else 0
            for item in reversed(pending):
                total += work_from_bits(int(item["bits"], 16))
                self._chainwork[item["hash"]] = total
            return total


def chainwork_hex(value: int) -> str:
    """Chainwork as bitcoind prints it: 64 lowercase hex digits."""
    return f"{value:064x}"
