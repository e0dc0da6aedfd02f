"""Nostr events as plain data (`SignedEvent`): shape checks, then a real id/signature check.

`SignedEvent` is the project's own event type: what the relay pool delivers (shape, id and
signature checked) and what our builders sign (nostr/nip90.py) and the pool publishes. No
other part of the daemon sees nostr-sdk's types.

Everything that arrives from a relay goes through `parse_raw` before anything else looks at
it: the JSON text is size-capped before it is parsed, the parsed object must have NIP-01's
shape (hex id/pubkey/sig, integer kind and created_at, tags as lists of strings, string
content), and the tag caps (count, value length) are applied while walking the tags once.
These checks are cheap and run on plain Python values; only `verify` builds a nostr-sdk
`Event` and checks the id hash and the BIP-340 signature, so it runs last (RELIABILITY N1).

`parse_raw` never raises for bad input: it returns a `SignedEvent` or a `ShapeError` whose
`reason` is one of `too-large`, `too-many-tags`, `tag-too-long` or `malformed`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import nostr_sdk as sdk

MAX_EVENT_BYTES = 64 * 1024
MAX_TAGS = 2000
MAX_TAG_VALUE_BYTES = 1024

ShapeReason = Literal["too-large", "too-many-tags", "tag-too-long", "malformed"]
VerifyFailure = Literal["bad-id", "bad-signature"]

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class EventCaps:
    """Caps on untrusted events (RELIABILITY N2): whole event, tag count, one tag value."""

    max_event_bytes: int = MAX_EVENT_BYTES
    max_tags: int = MAX_TAGS
    max_tag_value_bytes: int = MAX_TAG_VALUE_BYTES


@dataclass(frozen=True)
class ShapeError:
    """Why an event was refused before its content was looked at."""

    reason: ShapeReason
    detail: str


@dataclass(frozen=True)
class SignedEvent:
    """A NIP-01 event as plain data.

    From `parse_raw` its shape is checked but its id and signature are not (that is
    `verify`'s job); from the relay pool and from our own builders both hold.
    """

    id: str
    pubkey: str
    created_at: int
    kind: int
    tags: tuple[tuple[str, ...], ...]
    content: str
    sig: str
    json: str
    """The event as compact JSON text (what `verify` checks and `request` tags carry)."""

    def first(self, name: str) -> tuple[str, ...] | None:
        """The first tag named `name`, or None."""
        return next((t for t in self.tags if t and t[0] == name), None)

    def all(self, name: str) -> list[tuple[str, ...]]:
        return [t for t in self.tags if t and t[0] == name]


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _too_long(value: str | bytes, cap: int) -> bool:
    """More than `cap` UTF-8 bytes? (A char is 1 to 4 bytes: encode only when in doubt.)"""
    if isinstance(value, bytes) or len(value) > cap:
        return len(value) > cap
    return len(value) * 4 > cap and len(value.encode("utf-8", "surrogatepass")) > cap


def compact_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def check_tags(tags: object, caps: EventCaps) -> tuple[tuple[str, ...], ...] | ShapeError:
    """Tags as tuples of strings, within the caps; used for event tags and decrypted tags."""
    if not isinstance(tags, list):
        return ShapeError("malformed", "tags is not a list")
    if len(tags) > caps.max_tags:
        return ShapeError("too-many-tags", f"{len(tags)} tags (cap {caps.max_tags})")
    out: list[tuple[str, ...]] = []
    for tag in tags:
        if not isinstance(tag, list) or not tag:
            return ShapeError("malformed", "a tag is not a non-empty list")
        for value in tag:
            if not isinstance(value, str):
                return ShapeError("malformed", "a tag value is not a string")
            if _too_long(value, caps.max_tag_value_bytes):
                name = tag[0][:16]
                return ShapeError(
                    "tag-too-long", f"a '{name}' tag value exceeds {caps.max_tag_value_bytes} bytes"
                )
        out.append(tuple(tag))
    return tuple(out)


def parse_raw(
    data: str | bytes | Mapping[str, Any], caps: EventCaps | None = None
) -> SignedEvent | ShapeError:
    """Parse and shape-check one untrusted event (text, bytes or an already decoded object)."""
    caps = caps or EventCaps()
    too_large = ShapeError("too-large", f"event exceeds {caps.max_event_bytes} bytes")
    obj: Any
    text: str
    if isinstance(data, str | bytes):
        if _too_long(data, caps.max_event_bytes):
            return too_large
        try:
            obj = json.loads(data)
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except (ValueError, RecursionError):
            return ShapeError("malformed", "not JSON")
    else:
        obj = data
        try:
            text = compact_json(obj)
        except (ValueError, TypeError, RecursionError):
            return ShapeError("malformed", "not serialisable as JSON text")
        if _too_long(text, caps.max_event_bytes):
            return too_large
    if not isinstance(obj, Mapping):
        return ShapeError("malformed", "not a JSON object")
    content = obj.get("content")
    if not isinstance(content, str):
        return ShapeError("malformed", "content is not a string")
    tags = check_tags(obj.get("tags"), caps)
    if isinstance(tags, ShapeError):
        return tags
    kind: Any = obj.get("kind")
    created_at: Any = obj.get("created_at")
    if not _is_int(kind) or not 0 <= kind <= 65535:
        return ShapeError("malformed", "kind is not an integer in 0..65535")
    if not _is_int(created_at) or not 0 <= created_at < 2**63:
        return ShapeError("malformed", "created_at is not a non-negative integer")
    ident: Any = obj.get("id")
    pubkey: Any = obj.get("pubkey")
    sig: Any = obj.get("sig")
    if not (_is_hex(ident, 64) and _is_hex(pubkey, 64) and _is_hex(sig, 128)):
        return ShapeError("malformed", "id, pubkey or sig is not lower-case hex of the right size")
    return SignedEvent(
        id=str(ident),
        pubkey=str(pubkey),
        created_at=int(created_at),
        kind=int(kind),
        tags=tags,
        content=content,
        sig=str(sig),
        json=text,
    )


def verify(raw: SignedEvent) -> sdk.Event | VerifyFailure:
    """Check the id hash and the BIP-340 signature; return the nostr-sdk Event when both hold."""
    try:
        event = sdk.Event.from_json(raw.json)
    except Exception:  # the SDK refuses keys that are not curve points, odd JSON ...
        return "bad-signature"
    try:
        if not event.verify_id():
            return "bad-id"
        if not event.verify_signature():
            return "bad-signature"
    except Exception:
        return "bad-signature"
    return event


def from_sdk(event: sdk.Event) -> SignedEvent:
    """A nostr-sdk Event (one we signed, or one the SDK verified) as a SignedEvent."""
    parsed = parse_raw(event.as_json(), EventCaps(1 << 30, 1 << 30, 1 << 30))
    if isinstance(parsed, ShapeError):  # the SDK's own events always have NIP-01's shape
        raise ValueError(f"nostr-sdk produced an event of the wrong shape: {parsed.detail}")
    return parsed


def event_json(event: SignedEvent) -> dict[str, Any]:
    """An event as a plain JSON object."""
    out: dict[str, Any] = json.loads(event.json)
    return out
