"""The restored wallet's sweep of an old channel's close output (wallet/sweep.py), offline: the
scripts a seed may be paid to, and a spend of each kind, signed and checked. The devnet test
(tests/earn/test_restore_e2e.py) has a real hub's close swept and confirmed."""

from __future__ import annotations

import pytest
from embit import bip39
from embit.ec import Signature
from embit.script import Script, p2pkh, p2wsh
from embit.transaction import SIGHASH, Transaction

from autopilotd.wallet import sweep as sw

WORDS = bip39.mnemonic_from_bytes(bytes(range(32)))
DEST = bytes.fromhex("0014" + "11" * 20)  # a P2WPKH of the wallet


def test_a_seed_has_two_thousand_possible_scripts_and_another_seed_none_of_them() -> None:
    mine = sw.payment_scripts(WORDS)
    assert len(mine) == 2 * sw.STATIC_PAYMENT_KEY_COUNT
    assert {s.kind for s in mine.values()} == {"anchor", "static"}
    other = sw.payment_scripts(bip39.mnemonic_from_bytes(bytes(range(1, 33))))
    assert not set(mine) & set(other)


@pytest.mark.parametrize("kind", ["anchor", "static"])
def test_a_sweep_spends_the_output_whole_less_its_fee_and_is_signed_by_its_key(kind: str) -> None:
    scripts = sw.payment_scripts(WORDS)
    script_hex, which = next((h, s) for h, s in scripts.items() if s.kind == kind and s.index == 7)
    made = sw.sweep(WORDS, which, "ab" * 32, 2, 50_042, DEST, 2)
    tx = Transaction.from_string(made.hex)
    assert made.txid == tx.txid().hex()
    assert made.fee_sats == sw.SWEEP_VSIZE[kind] * 2 and made.sent_sats == 50_042 - made.fee_sats
    assert [(o.value, o.script_pubkey.data) for o in tx.vout] == [(made.sent_sats, DEST)]
    (vin,) = tx.vin
    assert (vin.txid.hex(), vin.vout) == ("ab" * 32, 2)
    assert vin.sequence == (1 if kind == "anchor" else 0xFFFF_FFFD)  # an anchor waits a block
    signature, last = vin.witness.items
    assert signature[-1] == SIGHASH.ALL
    if kind == "anchor":
        code = Script(last)
        assert p2wsh(code).data.hex() == script_hex  # the witness script is the output's
        pub = sw._key(WORDS, 7).get_public_key()
    else:
        pub = sw._key(WORDS, 7).get_public_key()
        assert last == pub.sec()
        code = p2pkh(pub)
    digest = tx.sighash_segwit(0, code, 50_042, sighash=SIGHASH.ALL)
    assert pub.verify(Signature.parse(signature[:-1]), digest)


def test_an_output_too_small_for_its_fee_is_not_swept() -> None:
    which = sw.PaymentScript("anchor", 0)
    with pytest.raises(ValueError, match="do not cover"):
        sw.sweep(WORDS, which, "ab" * 32, 0, 500, DEST, 2)
