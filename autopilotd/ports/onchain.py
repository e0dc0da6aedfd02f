"""On-chain money in our own types: where a send goes, what it costs, what the node recorded.

A `Destination` is an address checked for the wallet's network, with the size of the output
it makes (fees and the dust limit follow from it). A `Quote` is what a send or a sweep will
move and cost, worked out by the node's adapter before anything is sent: the amount to the
address is exact; the fee is exact when `exact`, else the most it can be. `ChannelInfo` is a
channel as a cash-out sees it, and `OnchainTx` the node's own record of a transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from embit import base58, bech32

FEE_RATE_MIN_SAT_VB = 1  # Bitcoin Core's default minimum relay fee
FEE_RATE_MAX_SAT_VB = 1000  # far above any rate a send needs: a typo, not a choice

# What each network calls its addresses: the bech32 prefix and the base58 version bytes.
_HRP = {"bitcoin": "bc", "testnet": "tb", "signet": "tb", "regtest": "bcrt"}
_BASE58_MAINNET = {0x00: 25, 0x05: 23}  # version byte → script length (P2PKH, P2SH)
_BASE58_TEST = {0x6F: 25, 0xC4: 23}
_HRP_NAMES = {"bc": "bitcoin (mainnet)", "tb": "testnet or signet", "bcrt": "regtest"}


class AddressError(ValueError):
    """The text is not an address this wallet can pay; the message says why, for users."""


@dataclass(frozen=True)
class Destination:
    """A Bitcoin address valid on the wallet's network."""

    address: str
    network: str
    script_len: int  # bytes of the output script the address stands for
    witness: bool  # a segwit program (its outputs cost less to spend: a lower dust limit)

    @property
    def output_vbytes(self) -> int:
        """The size of an output paying this address: value, script length, script."""
        return 8 + 1 + self.script_len

    @property
    def dust_sats(self) -> int:
        """The smallest amount nodes relay to this address (Bitcoin Core's rule at 3 sat/vB)."""
        spend = 32 + 4 + 1 + 107 // 4 + 4 if self.witness else 32 + 4 + 1 + 107 + 4
        return (self.output_vbytes + spend) * 3

    @property
    def uri(self) -> str:
        return f"bitcoin:{self.address}"


def parse_destination(text: str, network: str) -> Destination:
    """Check `text` as an address for `network` (a plain `bitcoin:` URI is accepted).

    Raises AddressError naming what is wrong: not an address, or one of another network.
    """
    address = text.strip()
    if address.lower().startswith("bitcoin:"):
        address = address[len("bitcoin:") :]
        if "?" in address:
            raise AddressError(
                "that payment link carries more than an address: paste the address alone"
            )
    if not address:
        raise AddressError("give an address to send to")
    hrp_wanted = _HRP.get(network)
    if hrp_wanted is None:
        raise AddressError(f"the wallet's network {network!r} has no on-chain addresses")
    _, hrp, _ = bech32.bech32_decode(address)
    if hrp is not None:
        lower = address.lower()
        version, program = bech32.decode(hrp, lower)
        if version is None or program is None:
            raise AddressError("that is not a valid Bitcoin address (its checksum or form is bad)")
        if hrp != hrp_wanted:
            other = _HRP_NAMES.get(hrp, f"another network ({hrp})")
            raise AddressError(f"that address is for {other}; the wallet runs on {network}")
        return Destination(lower, network, 2 + len(program), witness=True)
    try:
        data = base58.decode_check(address)
    except Exception:  # embit raises several kinds for bad base58; all mean "not an address"
        raise AddressError("that is not a valid Bitcoin address") from None
    if len(data) != 21 or data[0] not in _BASE58_MAINNET | _BASE58_TEST:
        raise AddressError("that is not a valid Bitcoin address")
    mainnet = data[0] in _BASE58_MAINNET
    if mainnet != (network == "bitcoin"):
        other = "bitcoin (mainnet)" if mainnet else "a test network"
        raise AddressError(f"that address is for {other}; the wallet runs on {network}")
    table = _BASE58_MAINNET if mainnet else _BASE58_TEST
    return Destination(address, network, table[data[0]], witness=False)


@dataclass(frozen=True)
class Quote:
    """What a send (or a sweep of every coin) moves and costs, before it is made.

    `amount_sats` is what the address receives: always exact for a send of an amount; for a
    sweep exact when `exact`, else the least it can be (None: not known yet, when a channel
    close's fee is agreed at close). `fee_sats` is the fee: exact when `exact`, else the most
    the transaction can pay. `coins` is how many of the wallet's coins the figures allow for.
    """

    amount_sats: int | None
    fee_sats: int
    exact: bool
    coins: int


@dataclass(frozen=True)
class ChannelInfo:
    """A channel as a cash-out sees it.

    `balance_sats` is this wallet's side (before any closing fee); `returns_sats` what a
    cooperative close pays back on chain: all of the balance when the peer opened the channel
    (the opener pays the closing fee), 0 below the dust limit, None when this wallet opened
    it (the closing fee, from this wallet's side, is agreed with the peer at close).
    """

    channel_id: str
    user_channel_id: str
    peer_id: str
    opened_by_us: bool
    usable: bool
    balance_sats: int
    returns_sats: int | None

    def to_json(self) -> dict[str, object]:
        return {
            "channel_id": self.channel_id,
            "peer_id": self.peer_id,
            "opened_by": "this wallet" if self.opened_by_us else "the peer",
            "usable": self.usable,
            "balance_sats": self.balance_sats,
            "closing_fee_sats": None if self.opened_by_us else 0,
            "returns_sats": self.returns_sats,
        }


@dataclass(frozen=True)
class OnchainTx:
    """One transaction in the node's record of its on-chain wallet.

    Outgoing: `amount_sats` left the wallet to others and `fee_sats` was paid. Incoming:
    `amount_sats` arrived. `height` is the block that holds it (None: not in a block yet).
    """

    txid: str
    direction: Literal["in", "out"]
    amount_sats: int
    fee_sats: int | None
    height: int | None
