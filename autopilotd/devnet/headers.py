"""Verbose block headers with `chainwork`, built from btcd's raw headers.

btcd's verbose `getblockheader` lacks `chainwork`, which LDK's block sync checks exactly
(`chainwork == prev.chainwork + header.work()`), and it fails for blocks that a reorg left
off the main chain. The shim therefore asks btcd only for the raw 80-byte header (which
btcd serves for every block it knows) and derives height and chainwork itself, the way
Bitcoin Core does: the sum of every block's work back to genesis. Both are cached by block
hash; a hash always names the same ancestry, so the cache stays correct across reorgs.
"""

import asyncio
import hashlib
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

_MAX_256 = (1 << 256) - 1
NULL_HASH = "00" * 32

RawHeaderFetcher = Callable[[str], Awaitable[str]]


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


@dataclass(frozen=True)
class Header:
    """The fields of an 80-byte block header, hashes in RPC (reversed hex) order."""

    hash: str
    version: int
    previousblockhash: str
    merkleroot: str
    time: int
    bits: int
    nonce: int

    @classmethod
    def from_hex(cls, raw_hex: str) -> "Header":
        """Parse a serialized header as `getblockheader <hash> false` returns it."""
        raw = bytes.fromhex(raw_hex)
        if len(raw) != 80:
            raise ValueError(f"a block header has 80 bytes, not {len(raw)}")
        version, prev, merkle, time, bits, nonce = struct.unpack("<i32s32sIII", raw)
        block_hash = hashlib.sha256(hashlib.sha256(raw).digest()).digest()
        return cls(
            hash=block_hash[::-1].hex(),
            version=version,
            previousblockhash=prev[::-1].hex(),
            merkleroot=merkle[::-1].hex(),
            time=time,
            bits=bits,
            nonce=nonce,
        )


@dataclass(frozen=True)
class ChainPosition:
    """Where a block sits: its height and the chain's total work up to and including it."""

    height: int
    chainwork: int


class HeaderIndex:
    """Height and chainwork by block hash, filled on demand by walking back to a known block."""

    def __init__(self, fetch_raw_header: RawHeaderFetcher) -> None:
        self._fetch_raw_header = fetch_raw_header
        self._positions: dict[str, ChainPosition] = {}
        self._lock = asyncio.Lock()

    async def header(self, block_hash: str) -> Header:
        """The parsed header of `block_hash` (from btcd)."""
        header = Header.from_hex(await self._fetch_raw_header(block_hash))
        if header.hash != block_hash:
            raise ValueError(f"btcd returned header {header.hash} for {block_hash}")
        return header

    async def position(self, header: Header) -> ChainPosition:
        """Height and chainwork of the block with this header."""
        known = self._positions.get(header.hash)
        if known is not None:
            return known
        async with self._lock:
            pending = [header]
            while True:
                prev = pending[-1].previousblockhash
                if prev == NULL_HASH or prev in self._positions:
                    break
                pending.append(await self.header(prev))
            prev = pending[-1].previousblockhash
            base = self._positions.get(prev, ChainPosition(-1, 0))
            for item in reversed(pending):
                base = ChainPosition(base.height + 1, base.chainwork + work_from_bits(item.bits))
                self._positions[item.hash] = base
            return base


def chainwork_hex(value: int) -> str:
    """Chainwork as bitcoind prints it: 64 lowercase hex digits."""
    return f"{value:064x}"
