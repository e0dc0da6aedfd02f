"""NIP-06: the Nostr key derived from the wallet mnemonic, checked on the published vectors."""

from __future__ import annotations

import pickle

import nostr_sdk as sdk
import pytest

from autopilotd.nostr.identity import (
    IdentityError,
    derive_secret,
    generate_identity,
    identity_from_mnemonic,
)

# NIP-06 "Test vectors" (nostr-protocol/nips, 06.md)
VECTORS = [
    (
        "leader monkey parrot ring guide accident before fence cannon height naive bean",
        "7f7ff03d123792d6ac594bfa67bf6d0c0ab55b6b1fdb6249303fe861f1ccba9a",
        "17162c921dc4d2518f9a101db33695df1afb56ab82f5ff3e5da6eec3ca5cd917",
        "npub1zutzeysacnf9rru6zqwmxd54mud0k44tst6l70ja5mhv8jjumytsd2x7nu",
    ),
    (
        "what bleak badge arrange retreat wolf trade produce cricket blur garlic valid proud "
        "rude strong choose busy staff weather area salt hollow arm fade",
        "c15d739894c81a2fcfd3a2df85a0d2c0dbc47a280d092799f144d73d7ae78add",
        "d41b22899549e1f3d335a31002cfd382174006e166d3e658e3a5eecdb6463573",
        "npub16sdj9zv4f8sl85e45vgq9n7nsgt5qphpvmf7vk8r5hhvmdjxx4es8rq74h",
    ),
]


@pytest.mark.parametrize(("mnemonic", "secret", "pubkey", "npub"), VECTORS)
def test_nip06_vectors(mnemonic: str, secret: str, pubkey: str, npub: str) -> None:
    assert derive_secret(mnemonic).hex() == secret
    identity = identity_from_mnemonic(mnemonic)
    assert identity.public().to_json() == {"npub": npub, "hex": pubkey}
    assert identity.pubkey_hex == pubkey
    # the same key as nostr-sdk's own NIP-06 derivation
    assert sdk.Keys.from_mnemonic(mnemonic).public_key().to_hex() == pubkey


def test_the_secret_never_shows(capsys: pytest.CaptureFixture[str]) -> None:
    mnemonic, secret, _, npub = VECTORS[0]
    identity = identity_from_mnemonic(mnemonic)
    for text in (repr(identity), str(identity), f"{identity}", repr(identity.public())):
        assert secret not in text and "nsec" not in text
    assert npub in repr(identity)
    with pytest.raises(TypeError):
        pickle.dumps(identity)


def test_accounts_differ_and_bad_mnemonics_are_refused() -> None:
    mnemonic = VECTORS[0][0]
    assert derive_secret(mnemonic, account=1) != derive_secret(mnemonic)
    assert derive_secret("  " + mnemonic.upper() + " ") == derive_secret(mnemonic)
    with pytest.raises(IdentityError):
        derive_secret(
            "leader monkey parrot ring guide accident before fence cannon height naive naive"
        )
    with pytest.raises(IdentityError):
        derive_secret(mnemonic, account=-1)
    assert generate_identity().pubkey_hex != generate_identity().pubkey_hex
