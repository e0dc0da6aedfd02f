"""NIP-42 as the Nexus's front checks it: the challenge, the relay tag, the time, the signature."""

from __future__ import annotations

import json

from autopilotd.nostr.events import SignedEvent, parse_raw
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip42 import KIND_CLIENT_AUTH, Nip42Error, check_auth
from autopilotd.nostr.nip90 import sign

NOW = 1_800_000_000
HOST = "nexus.example:7777"


def auth(identity: NostrIdentity, relay: str, challenge: str = "c1", **kw: int) -> SignedEvent:
    tags = [["relay", relay], ["challenge", challenge]]
    return sign(identity, kw.get("kind", KIND_CLIENT_AUTH), "", tags, kw.get("at", NOW))


def test_an_answer_to_this_challenge_for_this_host_passes(provider: NostrIdentity) -> None:
    for relay in (
        "ws://nexus.example:7777/",
        "wss://NEXUS.example:7777",
        "ws://nexus.example:7777",
    ):
        assert check_auth(auth(provider, relay), challenge="c1", host=HOST, now=NOW) == (
            provider.pubkey_hex
        )


def test_every_other_answer_is_refused(provider: NostrIdentity, buyer: NostrIdentity) -> None:
    good = auth(provider, "ws://nexus.example:7777/")
    cases = [
        auth(provider, "ws://nexus.example:7777/", challenge="other"),
        auth(provider, "ws://nexus.example:7778/"),
        auth(provider, "http://nexus.example:7777/"),
        auth(provider, "ws://127.0.0.1:40000"),
        auth(provider, "not a url at all"),
        auth(provider, "ws://nexus.example:7777/", kind=1),
        auth(provider, "ws://nexus.example:7777/", at=NOW - 601),
        auth(provider, "ws://nexus.example:7777/", at=NOW + 601),
    ]
    forged = parse_raw({**json.loads(good.json), "pubkey": buyer.pubkey_hex})
    assert isinstance(forged, SignedEvent)
    cases.append(forged)
    for event in cases:
        assert isinstance(check_auth(event, challenge="c1", host=HOST, now=NOW), Nip42Error)
