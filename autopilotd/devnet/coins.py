"""The devnet's own coins: the key btcd mines to, and spends from it to fund participants.

btcd mines only to `--miningaddr`, so the devnet owns that key (a P2WPKH key kept in the
devnet directory, mode 0600). Coinbase outputs mature after 100 blocks; the faucet spends
mature ones with transactions signed here (embit) and broadcast with `sendrawtransaction`.
"""

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embit import ec, script
from embit.networks import NETWORKS
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from autopilotd.devnet.rpc import BtcdRpc

logger = logging.getLogger(__name__)

COINBASE_MATURITY = 100
SATS_PER_BTC = 100_000_000
# Fee rate for faucet spends, sat/vB: above btcd's 1 sat/vB relay minimum.
FAUCET_FEE_RATE = 2
# Outputs below this are refused by relay policy as dust (P2TR/P2WSH being the largest).
DUST_LIMIT = 330


class FaucetError(RuntimeError):
    """The faucet cannot make the requested payment."""


class MinerKey:
    """The private key whose P2WPKH address receives every block reward."""

    def __init__(self, secret: bytes) -> None:
        self._key = ec.PrivateKey(secret)
        self.public_key = self._key.get_public_key()
        self.script_pubkey = script.p2wpkh(self.public_key)
        self.address: str = self.script_pubkey.address(NETWORKS["regtest"])

    @classmethod
    def load_or_create(cls, path: Path) -> "MinerKey":
        """Read the key from `path`, creating it exclusively (0600) on first use."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(bytes.fromhex(path.read_text().strip()))
        secret = secrets.token_bytes(32)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret.hex())
            handle.flush()
            os.fsync(handle.fileno())
        return cls(secret)

    def sign_input(self, tx: Transaction, index: int, value: int) -> None:
        """Sign input `index` (spending `value` sats from this key) in place."""
        sighash = tx.sighash_segwit(index, script.p2pkh(self.public_key), value)
        signature = self._key.sign(sighash)
        tx.vin[index].witness = script.witness_p2wpkh(signature, self.public_key)


@dataclass(frozen=True)
class Coin:
    """An unspent output of the miner key."""

    txid: str
    vout: int
    sats: int


class Faucet:
    """Pays regtest coins from mature block rewards of the miner key."""

    def __init__(self, rpc: BtcdRpc, key: MinerKey) -> None:
        self._rpc = rpc
        self._key = key
        # Heights below this have no unspent coinbase left (spends only ever move it up).
        self._next_height = 1
        # btcd's gettxout still reports outputs that a mempool transaction spends, so the
        # faucet remembers its own spends (the mempool does not survive a btcd restart).
        self._spent: set[tuple[str, int]] = set()

    @property
    def address(self) -> str:
        """The faucet's own address (the miner key's)."""
        return self._key.address

    async def spendable_coins(self, needed_sats: int) -> list[Coin]:
        """Mature, unspent coinbase outputs worth at least `needed_sats` in total."""
        tip: int = await self._rpc.call("getblockcount")
        coins: list[Coin] = []
        total = 0
        height = self._next_height
        while total < needed_sats and height <= tip - COINBASE_MATURITY:
            coin = await self._coinbase_coin(height)
            if coin is None and not coins:
                self._next_height = height + 1
            elif coin is not None:
                coins.append(coin)
                total += coin.sats
            height += 1
        if total < needed_sats:
            raise FaucetError(
                f"only {total} sats in mature block rewards, {needed_sats} needed: mine more blocks"
            )
        return coins

    async def _coinbase_coin(self, height: int) -> Coin | None:
        block_hash = await self._rpc.call("getblockhash", height)
        block: dict[str, Any] = await self._rpc.call("getblock", block_hash, 1)
        txid = block["tx"][0]
        for vout in range(2):
            out = await self._rpc.call("gettxout", txid, vout, True)
            if out is None or (txid, vout) in self._spent:
                continue
            if out["scriptPubKey"].get("hex") != self._key.script_pubkey.data.hex():
                continue
            return Coin(txid, vout, round(float(out["value"]) * SATS_PER_BTC))
        return None

    async def pay(self, outputs: list[tuple[str, int]]) -> str:
        """Send `sats` to each `address` in one transaction; returns its txid."""
        if not outputs:
            raise FaucetError("nothing to pay")
        for address, sats in outputs:
            if sats < DUST_LIMIT:
                raise FaucetError(f"{sats} sats to {address} is below the dust limit")
        scripts = [(script.address_to_scriptpubkey(address), sats) for address, sats in outputs]
        amount = sum(sats for _, sats in outputs)
        # A generous size bound: 68 vB per P2WPKH input, 43 vB per output (P2TR is largest).
        budget_inputs = 4
        fee = FAUCET_FEE_RATE * (11 + 68 * budget_inputs + 43 * (len(outputs) + 1))
        coins = await self.spendable_coins(amount + fee)
        fee = FAUCET_FEE_RATE * (11 + 68 * len(coins) + 43 * (len(outputs) + 1))
        change = sum(coin.sats for coin in coins) - amount - fee
        if change < 0:
            raise FaucetError("not enough mature coins for the fee")
        vout = [TransactionOutput(sats, spk) for spk, sats in scripts]
        if change >= DUST_LIMIT:
            vout.append(TransactionOutput(change, self._key.script_pubkey))
        tx = Transaction(
            vin=[TransactionInput(bytes.fromhex(coin.txid), coin.vout) for coin in coins],
            vout=vout,
        )
        for index, coin in enumerate(coins):
            self._key.sign_input(tx, index, coin.sats)
        txid: str = await self._rpc.call("sendrawtransaction", tx.serialize().hex())
        self._spent.update((coin.txid, coin.vout) for coin in coins)
        logger.info("faucet paid %d sats in %d outputs: %s", amount, len(outputs), txid)
        return txid
