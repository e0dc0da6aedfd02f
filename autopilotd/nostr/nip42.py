"""NIP-42 client authentication as a relay's front checks it (the Nexus proxies its relay).

nostr-sdk's `LocalRelay` accepts only an AUTH event whose `relay` tag is its own loopback
`ws://host:port`, which no client of a proxied relay can name; so the Nexus's front asks for
and checks AUTH itself. `check_auth(event, challenge=…, host=…, now=…)` checks, cheapest
first: kind 22242, the `challenge` tag equal to the one this connection was sent, the `relay`
tag a ws:// or wss:// URL whose host (and port) is `host`, the Host the client connected to,
`created_at` within `MAX_SKEW_S` of now, then the id and the BIP-340 signature. It returns the
signer's pubkey or a `Nip42Error` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from autopilotd.nostr.events import SignedEvent, verify

KIND_CLIENT_AUTH = 22242
MAX_SKEW_S = 600


@dataclass(frozen=True)
class Nip42Error:
    reason: str


def check_auth(event: SignedEvent, *, challenge: str, host: str, now: float) -> str | Nip42Error:
    """See the module docstring; never raises for bad input."""
    if event.kind != KIND_CLIENT_AUTH:
        return Nip42Error(f"the auth event must be kind {KIND_CLIENT_AUTH}")
    tag = event.first("challenge")
    if tag is None or len(tag) < 2 or tag[1] != challenge:
        return Nip42Error("the auth event does not answer this connection's challenge")
    relay = event.first("relay")
    try:
        url = urlsplit(relay[1]) if relay is not None and len(relay) > 1 else None
    except ValueError:
        url = None
    if url is None or url.scheme not in ("ws", "wss") or url.netloc.lower() != host.lower():
        return Nip42Error("the auth event's relay tag does not name this relay")
    if abs(event.created_at - now) > MAX_SKEW_S:
        return Nip42Error("the auth event's created_at is too far from now")
    if isinstance(verify(event), str):
        return Nip42Error("the auth event's id or signature is not valid")
    return event.pubkey
