"""History records as Nostr events to self: how job and buy transitions travel to the user's
relays and come back (the sync service, sync/service.py, decides when).

One record is one transition of one thing: a provider job reaching a stage, one of our buy
requests reaching a status, or a wallet payment (in or out) reaching a status. Its plaintext is
compact JSON

    {"v": 1, "type": "job" | "buy" | "pay_in" | "pay_out", "id": <request id or payment hash>,
     "step": <stage or status>,
     "at": <when, UNIX seconds>, "data": {...the row's fields, long texts cut}}

encrypted with NIP-44 (v2) to our own key, in an event of kind `KIND_HISTORY` signed by our
key, `created_at` = the transition's time, with NIP-70's `["-"]` tag so that relays accept it
only from us (after NIP-42 AUTH). Nothing about the job shows on the relay but its time.

`open_record` checks an event from a relay: our key, our kind, decrypts to a record of the
right shape; anything else is refused with the reason, never applied.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import nostr_sdk as sdk

from autopilotd.nostr.events import SignedEvent
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90 import sign
from autopilotd.vocab import BuyStatus, JobStage

KIND_HISTORY = 4377
"""A regular (stored, not replaced) kind: every transition is its own event."""
PROTECTED_TAG = ("-",)
VERSION = 1
TEXT_CAP = 500
"""Characters of a prompt, result or reason that travel (a history line, not the payload)."""

STEPS: dict[str, dict[str, int]] = {
    # the rank of each step: the furthest one reached is the thing's state, whatever the order
    # the records arrive in (a job never moves backwards, vocab.NEXT_STAGES)
    "job": {
        JobStage.RECEIVED: 0,
        JobStage.ACCEPTED: 1,
        JobStage.RUNNING: 2,
        JobStage.DELIVERED: 3,
        JobStage.REJECTED: 4,
        JobStage.FAILED: 4,
        JobStage.DELIVERED_UNPAID: 4,
        JobStage.PAID: 5,
    },
    # a wallet payment, by its direction (the same hash can be both: one daemon pays another)
    **{
        name: {"intent": 0, "pending": 1, "unknown": 1, "failed": 2, "succeeded": 3}
        for name in ("pay_in", "pay_out")
    },
    "buy": {
        BuyStatus.OPEN: 0,
        BuyStatus.PAYING: 1,
        BuyStatus.PAID: 2,
        BuyStatus.FAILED: 3,
        BuyStatus.EXPIRED: 3,
        BuyStatus.DONE: 4,
    },
}
_ID = re.compile(r"^[0-9a-f]{64}$")


class RecordError(ValueError):
    """An event that is not one of our history records (the reason is the message)."""


@dataclass(frozen=True)
class HistoryRecord:
    type: str
    id: str
    step: str
    at: float
    data: dict[str, Any]

    @property
    def subject(self) -> str:
        return f"{self.type}:{self.id}"

    @property
    def rank(self) -> int:
        return STEPS[self.type][self.step]

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "type": self.type,
            "id": self.id,
            "step": self.step,
            "at": self.at,
            "data": self.data,
        }


def cut(text: str | None) -> str | None:
    return None if text is None else text[:TEXT_CAP]


def check_record(value: object) -> HistoryRecord:
    """A record from decrypted JSON, or RecordError saying what is wrong with it."""
    if not isinstance(value, dict):
        raise RecordError("not a JSON object")
    if value.get("v") != VERSION:
        raise RecordError(f"unknown record version {value.get('v')!r}")
    kind, rid, step, at, data = (value.get(k) for k in ("type", "id", "step", "at", "data"))
    if kind not in STEPS:
        raise RecordError(f"unknown record type {kind!r}")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RecordError("the record's id is not a 64-hex event id")
    if step not in STEPS[kind]:
        raise RecordError(f"unknown {kind} step {step!r}")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at < 0:
        raise RecordError("the record's time is not a UNIX time")
    if not isinstance(data, dict):
        raise RecordError("the record's data is not an object")
    return HistoryRecord(kind, rid, step, float(at), data)


def seal(identity: NostrIdentity, record: HistoryRecord) -> SignedEvent:
    """The record as a signed, protected event encrypted to ourselves."""
    plain = json.dumps(record.to_json(), separators=(",", ":"), sort_keys=True)
    content = sdk.nip44_encrypt(
        identity.keys.secret_key(), identity.public_key, plain, sdk.Nip44Version.V2
    )
    return sign(identity, KIND_HISTORY, content, [PROTECTED_TAG], created_at=int(record.at))


def open_record(identity: NostrIdentity, event: SignedEvent) -> HistoryRecord:
    """Our record inside `event` (already id- and signature-checked), or RecordError."""
    if event.pubkey != identity.pubkey_hex:
        raise RecordError("not signed by this identity")
    if event.kind != KIND_HISTORY:
        raise RecordError(f"kind {event.kind} is not a history record")
    try:
        plain = identity.keys.nip44_decrypt(identity.public_key, event.content)
        value = json.loads(plain)
    except Exception as exc:  # the SDK's own errors, bad UTF-8, bad JSON
        raise RecordError(f"does not decrypt to a record: {type(exc).__name__}") from None
    return check_record(value)
