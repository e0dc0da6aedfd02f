"""NIP-98 HTTP auth: what `verify_auth_header` accepts and every way it refuses."""

from __future__ import annotations

import base64
import json

from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90 import sign
from autopilotd.nostr.nip98 import (
    KIND_HTTP_AUTH,
    Nip98Auth,
    Nip98Error,
    auth_event,
    auth_header,
    verify_auth_header,
)

URL = "https://nexus.example/api/session"
NOW = 1_800_000_000
BODY = b'{"client_id": "x"}'


def check(header: str | None, **over: object) -> Nip98Auth | Nip98Error:
    args: dict = {"url": URL, "method": "POST", "body": BODY, "now": NOW, **over}
    return verify_auth_header(header, **args)


def encode(event: dict) -> str:
    return "Nostr " + base64.b64encode(json.dumps(event).encode()).decode()


def test_a_correct_header_names_the_signer(provider: NostrIdentity) -> None:
    header = auth_header(provider, URL, "post", BODY, NOW)
    auth = check(header)
    assert isinstance(auth, Nip98Auth)
    assert (auth.pubkey, auth.created_at) == (provider.pubkey_hex, NOW)
    no_body = auth_header(provider, URL, "GET", b"", NOW)
    assert isinstance(check(no_body, method="GET", body=b""), Nip98Auth)


def test_the_window_is_minus_60_plus_30_seconds(provider: NostrIdentity) -> None:
    for offset, ok in ((-60, True), (-61, False), (30, True), (31, False)):
        result = check(auth_header(provider, URL, "POST", BODY, NOW + offset))
        assert isinstance(result, Nip98Auth) is ok, offset


def test_another_request_is_refused(provider: NostrIdentity) -> None:
    header = auth_header(provider, URL, "POST", BODY, NOW)
    for over in (
        {"url": URL + "?x=1"},
        {"url": "https://other.example/api/session"},
        {"method": "PUT"},
        {"body": b'{"client_id": "y"}'},
        {"body": b""},
    ):
        result = check(header, **over)
        assert isinstance(result, Nip98Error), over
    unsigned_body = auth_header(provider, URL, "POST", b"", NOW)  # no payload tag
    assert isinstance(check(unsigned_body), Nip98Error)


def test_malformed_headers_and_wrong_kinds_are_refused(provider: NostrIdentity) -> None:
    good = json.loads(auth_event(provider, URL, "POST", BODY, NOW).json)
    wrong_kind = sign(provider, 1, "", [["u", URL], ["method", "POST"]], NOW)
    for header in (
        None,
        "",
        "Bearer abc",
        "Nostr",
        "Nostr !!!not-base64!!!",
        "Nostr " + base64.b64encode(b"not json").decode(),
        "Nostr " + base64.b64encode(b"A" * 20_000).decode(),
        encode({**good, "tags": "not a list"}),
        encode(json.loads(wrong_kind.json)),
    ):
        assert isinstance(check(header), Nip98Error), header
    assert KIND_HTTP_AUTH == 27235


def test_a_forged_or_tampered_event_is_refused(
    provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    good = json.loads(auth_event(provider, URL, "POST", BODY, NOW).json)
    assert isinstance(check(encode(good)), Nip98Auth)
    for forged in (
        {**good, "pubkey": buyer.pubkey_hex},
        {**good, "content": "changed"},
        {**good, "sig": "0" * 128},
        {**good, "created_at": NOW - 1},
    ):
        assert isinstance(check(encode(forged)), Nip98Error), forged
