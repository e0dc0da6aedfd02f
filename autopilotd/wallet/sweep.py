"""A restored wallet's share of its old channels, from the words alone (wallet/recovery.py).

When a peer force-closes a channel this node lost the state of, the node's share goes to a
"to_remote" output locked to a payment key. ldk-node 0.7 builds LDK's `KeysManager` with
`v2_remote_key_derivation`: that key is one of `STATIC_PAYMENT_KEY_COUNT` keys derived from
the seed alone, so the outputs can be found on chain and spent without the channel's state.
ldk-node does not do it itself; this module derives the keys and signs the spend, following
LDK 0.2 (`lightning::sign::KeysManager`):

    seed64      = BIP-39 seed of the words (no passphrase: the daemon sets none)
    node_seed   = BIP-32 master private key of seed64          (ldk-node: Xpriv::new_master)
    keys_master = BIP-32 master of node_seed                   (LDK: KeysManager::new)
    payment_i   = keys_master / 8' / i'   for i in 0..999       (STATIC_PAYMENT_KEY_INDEX)

An anchor channel (ldk-node's default) pays `P2WSH(<payment_i> OP_CHECKSIGVERIFY OP_1
OP_CHECKSEQUENCEVERIFY)`, spendable one block after it confirms; a channel without anchors
pays `P2WPKH(payment_i)`. `sweep` spends one such output, whole, to an address of the wallet.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from embit import bip32, bip39
from embit.ec import PrivateKey
from embit.script import Script, Witness, p2pkh, p2wpkh, p2wsh
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

STATIC_PAYMENT_KEY_INDEX = 8
STATIC_PAYMENT_KEY_COUNT = 1000
HARDENED = 0x8000_0000
OP_CHECKSIGVERIFY, OP_1, OP_CHECKSEQUENCEVERIFY = 0xAD, 0x51, 0xB2
DUST_SATS = 330
SWEEP_VSIZE = {"anchor": 123, "static": 110}
"""The virtual size of a one-input, one-output sweep (a P2WSH or P2WPKH input, a segwit or
taproot output; the signature at its largest), for its fee."""

Kind = Literal["anchor", "static"]


@dataclass(frozen=True)
class PaymentScript:
    kind: Kind
    index: int


def _payment_root(mnemonic: str) -> bip32.HDKey:
    seed64 = bip39.mnemonic_to_seed(mnemonic, "")
    node_seed = hmac.new(b"Bitcoin seed", seed64, hashlib.sha512).digest()[:32]
    return bip32.HDKey.from_seed(node_seed).derive([HARDENED + STATIC_PAYMENT_KEY_INDEX])


def _key(mnemonic: str, index: int) -> PrivateKey:
    key = _payment_root(mnemonic).derive([HARDENED + index]).key
    assert isinstance(key, PrivateKey)
    return key


def _anchor_witness_script(key: PrivateKey) -> Script:
    pub = key.get_public_key().sec()
    return Script(
        bytes([len(pub)]) + pub + bytes([OP_CHECKSIGVERIFY, OP_1, OP_CHECKSEQUENCEVERIFY])
    )


def payment_scripts(mnemonic: str) -> dict[str, PaymentScript]:
    """Every script a peer's force-close may pay this seed's share to: script hex → which."""
    root = _payment_root(mnemonic)
    out: dict[str, PaymentScript] = {}
    for index in range(STATIC_PAYMENT_KEY_COUNT):
        key = root.derive([HARDENED + index]).key
        assert isinstance(key, PrivateKey)
        out[p2wsh(_anchor_witness_script(key)).data.hex()] = PaymentScript("anchor", index)
        out[p2wpkh(key.get_public_key()).data.hex()] = PaymentScript("static", index)
    return out


@dataclass(frozen=True)
class Sweep:
    txid: str
    hex: str
    fee_sats: int
    sent_sats: int


def sweep(
    mnemonic: str,
    which: PaymentScript,
    txid: str,
    vout: int,
    sats: int,
    destination_script: bytes,
    fee_rate_sat_vb: int,
) -> Sweep:
    """A signed transaction spending the output `txid:vout` (`sats`, paying `which`) whole to
    `destination_script`, less a fee at `fee_rate_sat_vb`. ValueError when what is left would
    be dust."""
    fee = SWEEP_VSIZE[which.kind] * fee_rate_sat_vb
    sent = sats - fee
    if sent < DUST_SATS:
        raise ValueError(f"{sats} sats do not cover a {fee}-sat fee and leave more than dust")
    key = _key(mnemonic, which.index)
    # An anchor output waits one block (OP_1 OP_CHECKSEQUENCEVERIFY): sequence 1.
    sequence = 1 if which.kind == "anchor" else 0xFFFF_FFFD
    tx = Transaction(
        version=2,
        vin=[TransactionInput(bytes.fromhex(txid), vout, sequence=sequence)],
        vout=[TransactionOutput(sent, Script(destination_script))],
    )
    anchor = which.kind == "anchor"
    code = _anchor_witness_script(key) if anchor else p2pkh(key.get_public_key())  # BIP-143
    digest = tx.sighash_segwit(0, code, sats, sighash=SIGHASH.ALL)
    signature = key.sign(digest).serialize() + bytes([SIGHASH.ALL])
    last = code.data if anchor else key.get_public_key().sec()  # witness script, or the key
    tx.vin[0].witness = Witness([signature, last])
    return Sweep(tx.txid().hex(), tx.serialize().hex(), fee, sent)
