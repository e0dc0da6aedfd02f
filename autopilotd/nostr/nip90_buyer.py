"""NIP-90 for the buyer: sign a job request, tell a late provider it lost, check answers.

`build_job_request` signs a request (kind, inputs, params, bid, optional target providers and
relays, optional NIP-44 encryption to one provider); `build_lost_race` tells a late provider
it lost (kind 7000 `error` / `lost-race`); `parse_response` checks a kind 7000 / 6xxx event
that claims to answer it (shape caps, `e` tag = our request id, `p` tag = us when present, id
hash and signature) and returns a `JobFeedback` or `JobResult`, or a `Rejection` from
`reasons` with a stable reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autopilotd.nostr import crypto
from autopilotd.nostr.events import (
    EventCaps,
    ShapeError,
    SignedEvent,
    compact_json,
    parse_raw,
    verify,
)
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90 import (
    KIND_FEEDBACK,
    REQUEST_KINDS,
    RESULT_KINDS,
    FeedbackStatus,
    JobInput,
    sign,
)
from autopilotd.nostr.reasons import Rejection, RejectReason


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


def build_lost_race(
    identity: NostrIdentity,
    *,
    request_id: str,
    provider: str,
    result_id: str | None = None,
) -> SignedEvent:
    """Buyer side: tell a provider whose result came too late that another one won.

    Kind 7000, `["status", "error", "lost-race"]`, `e` = our request (and the late result,
    when known), `p` = that provider.
    """
    tags: list[list[str]] = [["status", FeedbackStatus.ERROR.value, "lost-race"], ["e", request_id]]
    if result_id is not None:
        tags.append(["e", result_id])
    tags.append(["p", provider])
    return sign(identity, KIND_FEEDBACK, "", tags)


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
    extra_tags: Sequence[Sequence[str]] = (),
) -> SignedEvent:
    """Buyer side: sign a job request (a string `inputs` is one text input).

    `providers` become `p` tags (only they should answer). With `encrypt_to` (one provider's
    hex pubkey) the `i`/`param`/`bid`/`output` tags go NIP-44-encrypted into the content,
    with `["p", provider]` and `["encrypted"]` in the clear (NIP-90 encrypted requests).
    `extra_tags` go in the clear as they are (a Nexus marks its starter jobs so).
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
    public.extend(list(t) for t in extra_tags)
    return sign(identity, kind, content, public, created_at)


def parse_amount(tag: tuple[str, ...] | None) -> tuple[int | None, str | None]:
    if tag is None or len(tag) < 2 or not tag[1].isascii() or not tag[1].isdigit():
        return None, None
    if len(tag[1]) > 19:
        return None, None
    bolt11 = tag[2] if len(tag) > 2 and tag[2] else None
    return int(tag[1]), bolt11


def parse_response(
    data: str | bytes | Mapping[str, Any] | SignedEvent,
    *,
    request_id: str,
    buyer: NostrIdentity,
    caps: EventCaps | None = None,
) -> JobFeedback | JobResult | Rejection:
    """Buyer side: check an event that claims to answer our request `request_id`.

    Accepted: kind 7000 or 6000-6999, an `e` tag naming `request_id`, a `p` tag (if any)
    naming us, a valid id and signature. Anything else is a `Rejection`, never an exception.
    """
    raw = data if isinstance(data, SignedEvent) else parse_raw(data, caps)
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
    amount, bolt11 = parse_amount(raw.first("amount"))
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
