"""NIP-90 job events: the typed request, and the builders both sides sign with our keys.

Provider side: a validated `JobRequest` comes from `intake.RequestValidator`; the service then
signs, with `build_feedback` / `build_result`, the kind 7000 feedback (`processing`,
`payment-required` with `["amount", msats, bolt11]`, `success`, `error` + extra text such as
`lost-race`) and the result (kind = request kind + 1000, tags `e`, `p`, `request`, `amount`).
Discovery is a NIP-89 handler (`build_handler`, kind 31990 with a `d` tag and one `k` tag per
served kind), withdrawn with a NIP-09 deletion (`build_handler_deletion`).

Buyer side: `build_job_request` signs a request (kind, inputs, params, bid, optional target
providers and relays, optional NIP-44 encryption to one provider); `build_lost_race` tells a
late provider it lost (kind 7000 `error` / `lost-race`); `parse_response` checks a
kind 7000 / 6xxx event that claims to answer it (shape caps, `e` tag = our request id, `p` tag
= us when present, id hash and signature) and returns a `JobFeedback` or `JobResult`, or a
`Rejection` from `intake` with a stable reason.

Every builder returns a signed nostr-sdk `Event`, ready for `RelayPool.publish`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import nostr_sdk as sdk

from autopilotd.nostr import crypto
from autopilotd.nostr.events import (
    EventCaps,
    RawEvent,
    ShapeError,
    compact_json,
    parse_raw,
    verify,
)
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.reasons import Rejection, RejectReason

KIND_TEXT_GENERATION = 5050
KIND_EMBEDDINGS = 5060
"""Text embeddings. Not assigned in the NIP-90 job-kind list when chosen; see docs/nostr.md."""
KIND_FEEDBACK = 7000
KIND_HANDLER = 31990
KIND_DELETION = 5
SERVED_KINDS: frozenset[int] = frozenset({KIND_TEXT_GENERATION, KIND_EMBEDDINGS})

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


@dataclass(frozen=True)
class JobFeedback:
    """A provider's kind 7000 feedback on one of our requests (signature checked)."""

    id: str
    provider: str
    request_id: str
    status: str
    extra: str
    amount_msat: int | None
    bolt11: str | None
    content: str
    created_at: int


@dataclass(frozen=True)
class JobResult:
    """A provider's result (kind 6xxx) for one of our requests (signature checked).

    `content` is decrypted when the result was encrypted. `amount_msat`/`bolt11` are the
    provider's ask; never proof of anything (ARCHITECTURE §4.5).
    """

    id: str
    provider: str
    request_id: str
    kind: int
    content: str
    amount_msat: int | None
    bolt11: str | None
    encrypted: bool
    created_at: int


def _tag(values: Sequence[str]) -> sdk.Tag:
    return sdk.Tag.parse(list(values))


def _sign(
    identity: NostrIdentity,
    kind: int,
    content: str,
    tags: Sequence[Sequence[str]],
    created_at: int | None = None,
) -> sdk.Event:
    builder = sdk.EventBuilder(sdk.Kind(kind), content).tags([_tag(t) for t in tags])
    if created_at is not None:
        builder = builder.custom_created_at(sdk.Timestamp.from_secs(created_at))
    event: sdk.Event = builder.finalize(identity.keys)
    return event


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
) -> sdk.Event:
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
    return _sign(identity, KIND_FEEDBACK, content, tags)


def build_lost_race(
    identity: NostrIdentity,
    *,
    request_id: str,
    provider: str,
    result_id: str | None = None,
) -> sdk.Event:
    """Buyer side: tell a provider whose result came too late that another one won.

    Kind 7000, `["status", "error", "lost-race"]`, `e` = our request (and the late result,
    when known), `p` = that provider.
    """
    tags: list[list[str]] = [["status", FeedbackStatus.ERROR.value, "lost-race"], ["e", request_id]]
    if result_id is not None:
        tags.append(["e", result_id])
    tags.append(["p", provider])
    return _sign(identity, KIND_FEEDBACK, "", tags)


def build_result(
    identity: NostrIdentity,
    request: JobRequest,
    content: str,
    *,
    amount_msat: int | None = None,
    bolt11: str | None = None,
    relay_hint: str | None = None,
) -> sdk.Event:
    """The job result: kind = request kind + 1000, tags `request`, `e`, `p`, `amount`.

    For an encrypted request the content is encrypted to the buyer with the buyer's scheme,
    an `encrypted` tag is added and the plaintext inputs are not repeated.
    """
    tags: list[list[str]] = [
        ["request", request.json],
        ["e", request.id, relay_hint] if relay_hint else ["e", request.id],
        ["p", request.pubkey],
        *_amount_tag(amount_msat, bolt11),
    ]
    if request.encrypted:
        content = crypto.encrypt(identity, request.pubkey, content, request.scheme or "nip44")
        tags.append(["encrypted"])
    else:
        tags.extend(i.tag() for i in request.inputs)
    return _sign(identity, result_kind(request.kind), content, tags)


def build_handler(
    identity: NostrIdentity,
    kinds: Sequence[int],
    *,
    d_tag: str,
    metadata: Mapping[str, Any] | None = None,
) -> sdk.Event:
    """NIP-89 handler information (kind 31990): `d` tag, one `k` tag per served kind.

    `metadata` (name, about, pricing …) becomes the JSON content. The event is addressable
    (`31990:<pubkey>:<d_tag>`), so republishing with the same `d_tag` replaces it.
    """
    tags = [["d", d_tag], *(["k", str(k)] for k in sorted(set(kinds)))]
    return _sign(identity, KIND_HANDLER, compact_json(dict(metadata or {})), tags)


def handler_address(identity: NostrIdentity, d_tag: str) -> str:
    return f"{KIND_HANDLER}:{identity.pubkey_hex}:{d_tag}"


def build_handler_deletion(
    identity: NostrIdentity,
    *,
    d_tag: str,
    handler_event_ids: Sequence[str] = (),
    reason: str = "offline",
) -> sdk.Event:
    """NIP-09 deletion (kind 5) of our handler: its `a` address and any known event ids."""
    tags: list[list[str]] = [["a", handler_address(identity, d_tag)], ["k", str(KIND_HANDLER)]]
    tags.extend(["e", event_id] for event_id in handler_event_ids)
    return _sign(identity, KIND_DELETION, reason, tags)


def build_job_request(
    identity: NostrIdentity,
    kind: int,
    inputs: Sequence[JobInput] | str,
    *,
    bid_msat: int,
    params: Mapping[str, str | int | float] | None = None,
    output: str | None = None,
    providers: Sequence[str] = (),
    relays: Sequence[str] = (),
    expires_at: int | None = None,
    encrypt_to: str | None = None,
    created_at: int | None = None,
) -> sdk.Event:
    """Buyer side: sign a job request (a string `inputs` is one text input).

    `providers` become `p` tags (only they should answer). With `encrypt_to` (one provider's
    hex pubkey) the `i`/`param`/`bid`/`output` tags go NIP-44-encrypted into the content,
    with `["p", provider]` and `["encrypted"]` in the clear (NIP-90 encrypted requests).
    """
    if kind not in REQUEST_KINDS:
        raise ValueError(f"{kind} is not a job request kind")
    if bid_msat < 0:
        raise ValueError("bid must not be negative")
    items = [JobInput(inputs)] if isinstance(inputs, str) else list(inputs)
    private: list[list[str]] = [i.tag() for i in items]
    private.extend(["param", str(k), str(v)] for k, v in (params or {}).items())
    private.append(["bid", str(bid_msat)])
    if output:
        private.append(["output", output])
    public: list[list[str]] = []
    if relays:
        public.append(["relays", *relays])
    if expires_at is not None:
        public.append(["expiration", str(expires_at)])
    content = ""
    if encrypt_to is not None:
        content = crypto.encrypt(identity, encrypt_to, compact_json(private))
        public.extend([["p", encrypt_to], ["encrypted"]])
        public.extend(["p", p] for p in providers if p != encrypt_to)
    else:
        public = private + public
        public.extend(["p", p] for p in providers)
    return _sign(identity, kind, content, public, created_at)


def _parse_amount(tag: tuple[str, ...] | None) -> tuple[int | None, str | None]:
    if tag is None or len(tag) < 2 or not tag[1].isascii() or not tag[1].isdigit():
        return None, None
    if len(tag[1]) > 19:
        return None, None
    bolt11 = tag[2] if len(tag) > 2 and tag[2] else None
    return int(tag[1]), bolt11


def parse_response(
    data: str | bytes | Mapping[str, Any] | RawEvent,
    *,
    request_id: str,
    buyer: NostrIdentity,
    caps: EventCaps | None = None,
) -> JobFeedback | JobResult | Rejection:
    """Buyer side: check an event that claims to answer our request `request_id`.

    Accepted: kind 7000 or 6000-6999, an `e` tag naming `request_id`, a `p` tag (if any)
    naming us, a valid id and signature. Anything else is a `Rejection`, never an exception.
    """
    raw = data if isinstance(data, RawEvent) else parse_raw(data, caps)
    if isinstance(raw, ShapeError):
        return Rejection(RejectReason(raw.reason), raw.detail)
    if raw.kind != KIND_FEEDBACK and raw.kind not in RESULT_KINDS:
        return Rejection(RejectReason.WRONG_KIND, f"kind {raw.kind}", raw.id, raw.pubkey)
    e_tags = {t[1] for t in raw.all("e") if len(t) > 1}
    if request_id not in e_tags:
        return Rejection(RejectReason.NOT_FOR_US, "not about our request", raw.id, raw.pubkey)
    p_tags = {t[1] for t in raw.all("p") if len(t) > 1}
    if p_tags and buyer.pubkey_hex not in p_tags:
        return Rejection(RejectReason.NOT_FOR_US, "addressed to someone else", raw.id, raw.pubkey)
    checked = verify(raw)
    if isinstance(checked, str):
        return Rejection(RejectReason(checked), "id or signature check failed", raw.id, raw.pubkey)
    encrypted = raw.first("encrypted") is not None
    content = raw.content
    if encrypted and content:
        plain = crypto.decrypt(buyer, raw.pubkey, content)
        if plain is None:
            return Rejection(RejectReason.UNDECRYPTABLE, "cannot decrypt", raw.id, raw.pubkey)
        content = plain[0]
    amount, bolt11 = _parse_amount(raw.first("amount"))
    if raw.kind == KIND_FEEDBACK:
        status = raw.first("status")
        if status is None or len(status) < 2:
            return Rejection(RejectReason.MALFORMED, "feedback without status", raw.id, raw.pubkey)
        return JobFeedback(
            id=raw.id,
            provider=raw.pubkey,
            request_id=request_id,
            status=status[1],
            extra=status[2] if len(status) > 2 else "",
            amount_msat=amount,
            bolt11=bolt11,
            content=content,
            created_at=raw.created_at,
        )
    return JobResult(
        id=raw.id,
        provider=raw.pubkey,
        request_id=request_id,
        kind=raw.kind,
        content=content,
        amount_msat=amount,
        bolt11=bolt11,
        encrypted=encrypted,
        created_at=raw.created_at,
    )


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
