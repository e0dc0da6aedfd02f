"""What the channel recovery (wallet/recovery.py) reads from the chain and sends to it, in our
own types: a bitcoind-compatible RPC is the one source (adapters/bitcoind_chain.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ChainError(Exception):
    """The chain source did not answer, or refused (the reason is the message)."""


@dataclass(frozen=True)
class ChainOutput:
    txid: str
    vout: int
    sats: int
    script_hex: str
    height: int


class ChainReader(Protocol):
    async def tip(self) -> int:
        """The height of the best block."""
        ...

    async def outputs(self, height: int) -> list[ChainOutput]:
        """Every output of every transaction in the block at `height`."""
        ...

    async def confirmations(self, txid: str, vout: int) -> int | None:
        """None when the output is spent or unknown (the mempool counts), else how many blocks
        confirm it (0 in the mempool)."""
        ...

    async def broadcast(self, tx_hex: str) -> str:
        """Send a signed transaction; its txid. ChainError with the node's reason if refused."""
        ...
