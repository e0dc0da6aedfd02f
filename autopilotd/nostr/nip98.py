"""NIP-98 HTTP auth: a request signed by a Nostr key (kind 27235 in the Authorization header).

Client: `auth_header(identity, url, method, body)` → `"Nostr <base64(event JSON)>"`, with
`u` (the absolute URL), `method` and, for a body, `payload` (its SHA-256).

Server: `verify_auth_header(header, url=…, method=…, body=…, now=…)` checks, cheapest first:
the scheme and base64, the event's shape, kind 27235, `created_at` within −60/+30 s of now,
`u` equal to the request's absolute URL (exactly, query included), `method` equal to the
request's, `payload` equal to the body's SHA-256 (required when there is a body), then the
id and the BIP-340 signature. It returns the signer's pubkey and the event id, or a
`Nip98Error` with the reason (every failure is a 401). Replays are the caller's: each event id
may be accepted once (the Nexus keeps them for twice the window and answers 409).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from autopilotd.nostr.events import ShapeError, SignedEvent, parse_raw, verify
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90 import sign

KIND_HTTP_AUTH = 27235
MAX_AGE_S = 60
MAX_AHEAD_S = 30
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class Nip98Auth:
    pubkey: str
    event_id: str
    created_at: int


@dataclass(frozen=True)
class Nip98Error:
    reason: str


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def auth_event(
    identity: NostrIdentity, url: str, method: str, body: bytes = b"", created_at: int | None = None
) -> SignedEvent:
    tags = [["u", url], ["method", method.upper()]]
    if body:
        tags.append(["payload", body_hash(body)])
    return sign(identity, KIND_HTTP_AUTH, "", tags, created_at)


def auth_header(
    identity: NostrIdentity, url: str, method: str, body: bytes = b"", created_at: int | None = None
) -> str:
    """The `Authorization` header value for one request."""
    event = auth_event(identity, url, method, body, created_at)
    return "Nostr " + base64.b64encode(event.json.encode()).decode()


def verify_auth_header(
    header: str | None, *, url: str, method: str, body: bytes, now: float
) -> Nip98Auth | Nip98Error:
    """See the module docstring; never raises for bad input."""
    if not header:
        return Nip98Error("missing Authorization: Nostr header")
    scheme, _, encoded = header.partition(" ")
    if scheme != "Nostr" or not encoded or len(encoded) > MAX_HEADER_BYTES:
        return Nip98Error("the Authorization header is not 'Nostr <base64 event>'")
    try:
        text = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return Nip98Error("the Authorization header is not valid base64")
    event = parse_raw(text)
    if isinstance(event, ShapeError):
        return Nip98Error(f"the auth event is malformed ({event.reason})")
    if event.kind != KIND_HTTP_AUTH:
        return Nip98Error(f"the auth event must be kind {KIND_HTTP_AUTH}")
    if event.created_at < now - MAX_AGE_S or event.created_at > now + MAX_AHEAD_S:
        return Nip98Error("the auth event's created_at is outside −60/+30 s of now")
    u, verb = event.first("u"), event.first("method")
    if u is None or len(u) < 2 or u[1] != url:
        return Nip98Error("the auth event's u tag is not this request's URL")
    if verb is None or len(verb) < 2 or verb[1].upper() != method.upper():
        return Nip98Error("the auth event's method tag is not this request's method")
    payload = event.first("payload")
    if body and (payload is None or len(payload) < 2 or payload[1] != body_hash(body)):
        return Nip98Error("the auth event's payload tag is not the body's SHA-256")
    if not body and payload is not None and (len(payload) < 2 or payload[1] != body_hash(b"")):
        return Nip98Error("the auth event's payload tag is not the body's SHA-256")
    if isinstance(verify(event), str):
        return Nip98Error("the auth event's id or signature is not valid")
    return Nip98Auth(event.pubkey, event.id, event.created_at)
