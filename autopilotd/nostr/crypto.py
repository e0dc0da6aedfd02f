"""Encrypted NIP-90 payloads: NIP-44 (v2) first, NIP-04 as the fallback; fail closed.

A buyer may hide a request's `i`/`param` tags in the content, encrypted to the provider's key
(NIP-90 "encrypted" requests). Decryption tries NIP-44 and then NIP-04 and returns None for
anything that does not decrypt to text, whatever the error: garbage never raises past here.
Results and feedback for an encrypted request are encrypted back with the scheme the buyer used.
"""

from __future__ import annotations

from typing import Literal

import nostr_sdk as sdk

from autopilotd.nostr.identity import NostrIdentity

Scheme = Literal["nip44", "nip04"]


def decrypt(identity: NostrIdentity, sender_hex: str, payload: str) -> tuple[str, Scheme] | None:
    """Decrypt `payload` from `sender_hex` to us; (plaintext, scheme) or None if it is not ours."""
    try:
        sender = sdk.PublicKey.parse(sender_hex)
    except Exception:
        return None
    schemes: tuple[Scheme, ...] = ("nip44", "nip04")
    for scheme in schemes:
        try:
            if scheme == "nip44":
                text = identity.keys.nip44_decrypt(sender, payload)
            else:
                text = identity.keys.nip04_decrypt(sender, payload)
        except Exception:  # the SDK raises its own errors, and UnicodeError on lone surrogates
            continue
        if isinstance(text, str):
            return text, scheme
    return None


def encrypt(
    identity: NostrIdentity, recipient_hex: str, plaintext: str, scheme: Scheme = "nip44"
) -> str:
    """Encrypt `plaintext` from us to `recipient_hex` (raises ValueError on a bad key)."""
    try:
        recipient = sdk.PublicKey.parse(recipient_hex)
    except Exception as exc:
        raise ValueError(f"not a public key: {recipient_hex[:16]}") from exc
    if scheme == "nip44":
        out: str = identity.keys.nip44_encrypt(recipient, plaintext)
    else:
        out = identity.keys.nip04_encrypt(recipient, plaintext)
    return out
