"""The daemon's Nostr identity, derived from the wallet's BIP-39 mnemonic by NIP-06.

One backup covers both the Lightning wallet and the Nostr key: the secret key is the BIP-32
child at `m/44'/1237'/<account>'/0/0` of the mnemonic's seed (NIP-06; account 0 by default).
The derivation is done here with embit so the path is explicit in our code, and checked
against the published NIP-06 test vectors and nostr-sdk's own `Keys.from_mnemonic` in tests.

The secret never leaves a `NostrIdentity` except as the nostr-sdk `Keys` object handed to
signers: its `repr`/`str` show only the npub, and `public()` is what commands may return.
"""

from __future__ import annotations

from dataclasses import dataclass

import nostr_sdk as sdk
from embit import bip32, bip39

NIP06_PATH = "m/44h/1237h/{account}h/0/0"
"""NIP-06 derivation path, `h` marking hardened steps (embit's notation for `'`)."""


class IdentityError(ValueError):
    """The mnemonic is not a valid BIP-39 phrase, so no Nostr key can be derived from it."""


@dataclass(frozen=True)
class PublicIdentity:
    """What may be shown about the identity: the public key as npub (bech32) and hex."""

    npub: str
    hex: str

    def to_json(self) -> dict[str, str]:
        return {"npub": self.npub, "hex": self.hex}


class NostrIdentity:
    """The daemon's signing keys. Never prints or serialises its secret."""

    __slots__ = ("_keys", "_public")

    def __init__(self, keys: sdk.Keys) -> None:
        self._keys = keys
        pk = keys.public_key()
        self._public = PublicIdentity(npub=pk.to_bech32(), hex=pk.to_hex())

    @property
    def keys(self) -> sdk.Keys:
        """The nostr-sdk signer (for `EventBuilder.finalize` and NIP-44/NIP-04)."""
        return self._keys

    @property
    def public_key(self) -> sdk.PublicKey:
        return self._keys.public_key()

    @property
    def pubkey_hex(self) -> str:
        return self._public.hex

    def public(self) -> PublicIdentity:
        return self._public

    def __repr__(self) -> str:
        return f"NostrIdentity({self._public.npub})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a NostrIdentity holds a secret key and is not serialisable")


def derive_secret(mnemonic: str, passphrase: str = "", account: int = 0) -> bytes:
    """The 32-byte NIP-06 secret key for `mnemonic` (BIP-39 seed with `passphrase`)."""
    words = " ".join(mnemonic.strip().lower().split())
    if not bip39.mnemonic_is_valid(words):
        raise IdentityError("not a valid BIP-39 mnemonic")
    if not 0 <= account < 2**31:
        raise IdentityError("account must be between 0 and 2^31 - 1")
    seed = bip39.mnemonic_to_seed(words, passphrase)
    child = bip32.HDKey.from_seed(seed).derive(NIP06_PATH.format(account=account))
    secret: bytes = child.key.secret
    return secret


def identity_from_mnemonic(mnemonic: str, passphrase: str = "", account: int = 0) -> NostrIdentity:
    """Derive the daemon's identity from the wallet mnemonic (NIP-06, account 0 by default)."""
    secret = derive_secret(mnemonic, passphrase, account)
    return NostrIdentity(sdk.Keys(sdk.SecretKey.from_bytes(secret)))


def generate_identity() -> NostrIdentity:
    """A random throw-away identity (tests, the buyer's per-run keys in demos)."""
    return NostrIdentity(sdk.Keys.generate())
