"""NIP-90 job events: the typed request, and the builders both sides sign with our keys.

Provider side: a validated `JobRequest` comes from `intake.RequestValidator`; the service then
signs, with `build_feedback` / `build_result`, the kind 7000 feedback (`processing`,
`payment-required` with `["amount", msats, bolt11]`, `success` with the paid `amount`,
`error` + extra text) and the result (kind = request kind + 1000, tags `e`, `p`, `request`,
`amount`).
Discovery is a NIP-89 handler (`build_handler`, kind 31990 with a `d` tag and one `k` tag per
served kind), withdrawn with a NIP-09 deletion (`build_handler_deletion`).

The buyer's side (requests, lost-race, checking answers) is in nip90_buyer.py. Every builder
returns a `SignedEvent`, ready for the relay pool's `publish`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import nostr_sdk as sdk

from autopilotd.nostr import crypto
from autopilotd.nostr.events import MAX_TAG_VALUE_BYTES, SignedEvent, compact_json, from_sdk
from autopilotd.nostr.identity import NostrIdentity

KIND_TEXT_GENERATION = 5050
KIND_EMBEDDINGS = 5060
"""Text embeddings. Not assigned in the NIP-90 job-kind list when chosen; see docs/nostr.md."""
KIND_SANDBOX = 5720
"""Sandboxed code execution. Not assigned in the NIP-90 job-kind list when chosen; its format
is in nip90_sandbox.py and docs/nostr.md."""
KIND_FINETUNE = 5740
"""LoRA fine-tuning of the provider's local model. Not assigned in the NIP-90 job-kind list
when chosen; its format is in nip90_finetune.py and docs/finetune.md."""
KIND_FEEDBACK = 7000
KIND_HANDLER = 31990
KIND_DELETION = 5
SERVED_KINDS: frozenset[int] = frozenset(
    {KIND_TEXT_GENERATION, KIND_EMBEDDINGS, KIND_SANDBOX, KIND_FINETUNE}
)

ECHO_INPUTS_BYTES = 4096
"""A result repeats its request's inputs only up to this many bytes (see `build_result`)."""

REQUEST_KINDS = range(5000, 6000)
RESULT_KINDS = range(6000, 7000)


def result_kind(request_kind: int) -> int:
    """NIP-90: the result of a job request of kind 5xxx has kind 6xxx."""
    if request_kind not in REQUEST_KINDS:
        raise ValueError(f"{request_kind} is not a job request kind")
    return request_kind + 1000


class FeedbackStatus(enum.StrEnum):
    """The `status` values of kind 7000 feedback (NIP-90)."""

    PAYMENT_REQUIRED = "payment-required"
    PROCESSING = "processing"
    ERROR = "error"
    SUCCESS = "success"
    PARTIAL = "partial"


InputType = Literal["text", "url", "event", "job"]


@dataclass(frozen=True)
class JobInput:
    """One `i` tag: `["i", data, type, relay?, marker?]`."""

    data: str
    type: str = "text"
    relay: str | None = None
    marker: str | None = None

    def tag(self) -> list[str]:
        out = ["i", self.data, self.type]
        if self.relay is not None or self.marker is not None:
            out.append(self.relay or "")
        if self.marker is not None:
            out.append(self.marker)
        return out


@dataclass(frozen=True)
class JobRequest:
    """A job request that passed every intake check (id and signature included).

    `params` holds every `param` tag as given; `model`, `max_tokens`, `temperature` and
    `top_p` are the ones the served kinds understand, already parsed. `expires_at` is the
    earlier of the NIP-40 `expiration` tag and `created_at` + the job ttl: after it, the
    buyer no longer waits for a result. `json` is the event as received (the result's
    `request` tag). For an encrypted request, inputs and params come from the decrypted
    content and `scheme` says how to encrypt the answer.
    """

    id: str
    pubkey: str
    kind: int
    created_at: int
    expires_at: int
    bid_msat: int
    inputs: tuple[JobInput, ...]
    params: tuple[tuple[str, str], ...] = ()
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    output: str | None = None
    relays: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    encrypted: bool = False
    scheme: crypto.Scheme | None = None
    json: str = field(default="", repr=False)

    @property
    def prompt(self) -> str:
        """The text of the first `text` input (what 5050 and the embeddings kind run on)."""
        return next((i.data for i in self.inputs if i.type == "text"), "")


def _tag(values: Sequence[str]) -> sdk.Tag:
    return sdk.Tag.parse(list(values))


def sign(
    identity: NostrIdentity,
    kind: int,
    content: str,
    tags: Sequence[Sequence[str]],
    created_at: int | None = None,
) -> SignedEvent:
    """Sign an event with our keys (the one place this package builds events)."""
    builder = sdk.EventBuilder(sdk.Kind(kind), content).tags([_tag(t) for t in tags])
    if created_at is not None:
        builder = builder.custom_created_at(sdk.Timestamp.from_secs(created_at))
    return from_sdk(builder.finalize(identity.keys))


def _amount_tag(amount_msat: int | None, bolt11: str | None) -> list[list[str]]:
    if amount_msat is None:
        return []
    if amount_msat < 0:
        raise ValueError("amount must not be negative")
    return [["amount", str(amount_msat), bolt11] if bolt11 else ["amount", str(amount_msat)]]


def build_feedback(
    identity: NostrIdentity,
    request: JobRequest,
    status: FeedbackStatus,
    *,
    extra: str = "",
    amount_msat: int | None = None,
    bolt11: str | None = None,
    content: str = "",
    relay_hint: str | None = None,
) -> SignedEvent:
    """Kind 7000 feedback on `request`: `status` (+ extra text), `e`, `p`, optional `amount`.

    `payment-required` must carry `amount_msat` and `bolt11`. (A buyer telling a provider it
    lost the race uses `build_lost_race`.)
    """
    if status == FeedbackStatus.PAYMENT_REQUIRED and (amount_msat is None or not bolt11):
        raise ValueError("payment-required feedback needs an amount and a bolt11 invoice")
    tags: list[list[str]] = [
        ["status", status.value, extra] if extra else ["status", status.value],
        ["e", request.id, relay_hint] if relay_hint else ["e", request.id],
        ["p", request.pubkey],
        *_amount_tag(amount_msat, bolt11),
    ]
    if request.encrypted and content:
        content = crypto.encrypt(identity, request.pubkey, content, request.scheme or "nip44")
        tags.append(["encrypted"])
    return sign(identity, KIND_FEEDBACK, content, tags)


def build_result(
    identity: NostrIdentity,
    request: JobRequest,
    content: str,
    *,
    amount_msat: int | None = None,
    bolt11: str | None = None,
    relay_hint: str | None = None,
) -> SignedEvent:
    """The job result: kind = request kind + 1000, tags `request`, `e`, `p`, `amount`.

    For an encrypted request the content is encrypted to the buyer with the buyer's scheme,
    an `encrypted` tag is added and the plaintext inputs are not repeated. Readers cap a tag
    value at 1 KiB and an event at 64 KiB (events.EventCaps): the request is echoed only when
    it fits one tag, and its inputs only while they are small (a sandbox job's files are not
    sent back), so a result is never too large to be read (NIP-90 says SHOULD for both).
    """
    echo = len(request.json.encode()) <= MAX_TAG_VALUE_BYTES
    tags: list[list[str]] = [
        *([["request", request.json]] if echo else []),
        ["e", request.id, relay_hint] if relay_hint else ["e", request.id],
        ["p", request.pubkey],
        *_amount_tag(amount_msat, bolt11),
    ]
    if request.encrypted:
        content = crypto.encrypt(identity, request.pubkey, content, request.scheme or "nip44")
        tags.append(["encrypted"])
    else:
        inputs = [i.tag() for i in request.inputs]
        if sum(len(v.encode()) for tag in inputs for v in tag) <= ECHO_INPUTS_BYTES:
            tags.extend(inputs)
    return sign(identity, result_kind(request.kind), content, tags)


def build_handler(
    identity: NostrIdentity,
    kinds: Sequence[int],
    *,
    d_tag: str,
    metadata: Mapping[str, Any] | None = None,
) -> SignedEvent:
    """NIP-89 handler information (kind 31990): `d` tag, one `k` tag per served kind.

    `metadata` (name, about, pricing …) becomes the JSON content. The event is addressable
    (`31990:<pubkey>:<d_tag>`), so republishing with the same `d_tag` replaces it.
    """
    tags = [["d", d_tag], *(["k", str(k)] for k in sorted(set(kinds)))]
    return sign(identity, KIND_HANDLER, compact_json(dict(metadata or {})), tags)


def handler_address(identity: NostrIdentity, d_tag: str) -> str:
    return f"{KIND_HANDLER}:{identity.pubkey_hex}:{d_tag}"


def build_handler_deletion(
    identity: NostrIdentity,
    *,
    d_tag: str,
    handler_event_ids: Sequence[str] = (),
    reason: str = "offline",
) -> SignedEvent:
    """NIP-09 deletion (kind 5) of our handler: its `a` address and any known event ids."""
    tags: list[list[str]] = [["a", handler_address(identity, d_tag)], ["k", str(KIND_HANDLER)]]
    tags.extend(["e", event_id] for event_id in handler_event_ids)
    return sign(identity, KIND_DELETION, reason, tags)


def embeddings_result(vectors: Sequence[Sequence[float]], model: str) -> str:
    """The content of a KIND_EMBEDDINGS result: JSON, documented in docs/nostr.md."""
    return compact_json(
        {
            "object": "list",
            "model": model,
            "data": [
                {"object": "embedding", "index": n, "embedding": [float(x) for x in vec]}
                for n, vec in enumerate(vectors)
            ],
        }
    )


def parse_embeddings_result(content: str) -> list[list[float]] | None:
    """Vectors from a KIND_EMBEDDINGS result's content, or None if it is not that format."""
    try:
        doc = json.loads(content)
        rows = sorted(doc["data"], key=lambda r: int(r["index"]))
        return [[float(x) for x in r["embedding"]] for r in rows]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
