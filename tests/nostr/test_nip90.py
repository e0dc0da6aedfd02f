"""NIP-90 builders, the buyer-side response parser, and the intake's rules one at a time."""

from __future__ import annotations

import json
import time

import nostr_sdk as sdk
import pytest

from autopilotd.nostr import crypto, nip90
from autopilotd.nostr.events import SignedEvent, compact_json, event_json, parse_raw, verify
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestValidator, TokenBuckets
from autopilotd.nostr.nip90 import FeedbackStatus, JobInput, JobRequest
from autopilotd.nostr.nip90_buyer import (
    JobFeedback,
    JobResult,
    build_job_request,
    build_lost_race,
    parse_response,
)
from autopilotd.nostr.reasons import Rejection, RejectReason

NOW = int(time.time())


def _text(event: SignedEvent | sdk.Event | str) -> str:
    """The event's JSON text: ours (a builder's), one signed with nostr-sdk, or as given."""
    if isinstance(event, str):
        return event
    return event.json if isinstance(event, SignedEvent) else event.as_json()


def _raw(event: SignedEvent) -> SignedEvent:
    raw = parse_raw(event.json)
    assert isinstance(raw, SignedEvent)
    assert isinstance(verify(raw), sdk.Event)
    return raw


def _accept(validator: RequestValidator, event: SignedEvent | sdk.Event | str) -> JobRequest:
    outcome = validator.validate(_text(event), now=NOW)
    assert isinstance(outcome, JobRequest), outcome
    return outcome


def _reject(validator: RequestValidator, event: SignedEvent | sdk.Event | str) -> RejectReason:
    outcome = validator.validate(_text(event), now=NOW)
    assert isinstance(outcome, Rejection), outcome
    return outcome.reason


@pytest.fixture
def validator(provider: NostrIdentity) -> RequestValidator:
    return RequestValidator(provider, IntakePolicy(min_bid_msat=1000))


def test_request_round_trip_with_params(
    validator: RequestValidator, provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    event = build_job_request(
        buyer,
        nip90.KIND_TEXT_GENERATION,
        [JobInput("Say hi", "text"), JobInput("https://x.example/doc", "url", "", "ctx")],
        bid_msat=21_000,
        params={"model": "tiny", "max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "seed": 1},
        output="text/plain",
        providers=[provider.pubkey_hex],
        relays=["ws://127.0.0.1:1"],
        expires_at=NOW + 60,
        created_at=NOW,
    )
    req = _accept(validator, event)
    assert (req.id, req.pubkey, req.kind) == (event.id, buyer.pubkey_hex, 5050)
    assert req.prompt == "Say hi" and req.inputs[1] == JobInput(
        "https://x.example/doc", "url", None, "ctx"
    )
    assert (req.model, req.max_tokens, req.temperature, req.top_p) == ("tiny", 64, 0.7, 0.9)
    assert ("seed", "1") in req.params and req.output == "text/plain"
    assert req.bid_msat == 21_000 and req.relays == ("ws://127.0.0.1:1",)
    assert req.targets == (provider.pubkey_hex,) and not req.encrypted
    assert req.created_at == NOW and req.expires_at == NOW + 60
    assert json.loads(req.json)["id"] == req.id
    assert validator.counters.accepted == 1


def test_provider_events(
    validator: RequestValidator, provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    req = _accept(validator, build_job_request(buyer, 5050, "q", bid_msat=5000, created_at=NOW))

    processing = _raw(nip90.build_feedback(provider, req, FeedbackStatus.PROCESSING))
    assert processing.kind == 7000 and processing.pubkey == provider.pubkey_hex
    assert processing.first("status") == ("status", "processing")
    assert processing.first("e") == ("e", req.id) and processing.first("p") == ("p", req.pubkey)

    invoice = _raw(
        nip90.build_feedback(
            provider, req, FeedbackStatus.PAYMENT_REQUIRED, amount_msat=5000, bolt11="lnbcrt50n1x"
        )
    )
    assert invoice.first("amount") == ("amount", "5000", "lnbcrt50n1x")
    with pytest.raises(ValueError):
        nip90.build_feedback(provider, req, FeedbackStatus.PAYMENT_REQUIRED, amount_msat=5000)

    lost = _raw(nip90.build_feedback(provider, req, FeedbackStatus.ERROR, extra="lost-race"))
    assert lost.first("status") == ("status", "error", "lost-race")

    result = _raw(
        nip90.build_result(provider, req, "hello", amount_msat=5000, bolt11="lnbcrt50n1x")
    )
    assert result.kind == 6050 and result.content == "hello"
    assert result.first("request") == ("request", req.json)
    assert result.first("e") == ("e", req.id) and result.first("p") == ("p", req.pubkey)
    assert result.first("amount") == ("amount", "5000", "lnbcrt50n1x")
    assert result.first("i") == ("i", "q", "text")

    handler = _raw(
        nip90.build_handler(provider, [5060, 5050, 5050], d_tag="apd", metadata={"name": "n"})
    )
    assert handler.kind == 31990 and handler.first("d") == ("d", "apd")
    assert [t[1] for t in handler.all("k")] == ["5050", "5060"]
    assert json.loads(handler.content) == {"name": "n"}
    gone = _raw(nip90.build_handler_deletion(provider, d_tag="apd", handler_event_ids=[handler.id]))
    assert gone.kind == 5
    assert gone.first("a") == ("a", f"31990:{provider.pubkey_hex}:apd")
    assert gone.first("e") == ("e", handler.id)


def test_buyer_parses_answers_to_its_request_only(
    validator: RequestValidator, provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    req = _accept(validator, build_job_request(buyer, 5050, "q", bid_msat=5000, created_at=NOW))
    fb = nip90.build_feedback(
        provider, req, FeedbackStatus.PAYMENT_REQUIRED, amount_msat=5000, bolt11="lnbc1"
    )
    parsed = parse_response(fb.json, request_id=req.id, buyer=buyer)
    assert isinstance(parsed, JobFeedback)
    assert (parsed.status, parsed.amount_msat, parsed.bolt11) == ("payment-required", 5000, "lnbc1")
    assert parsed.provider == provider.pubkey_hex
    res = nip90.build_result(provider, req, "out", amount_msat=5000)
    got = parse_response(res.json, request_id=req.id, buyer=buyer)
    assert isinstance(got, JobResult) and got.content == "out" and got.kind == 6050

    other = parse_response(res.json, request_id="0" * 64, buyer=buyer)
    assert isinstance(other, Rejection) and other.reason == RejectReason.NOT_FOR_US
    stranger = parse_response(res.json, request_id=req.id, buyer=generate_identity())
    assert isinstance(stranger, Rejection) and stranger.reason == RejectReason.NOT_FOR_US
    forged = event_json(res)
    forged["content"] = "forged"
    bad = parse_response(forged, request_id=req.id, buyer=buyer)
    assert isinstance(bad, Rejection) and bad.reason == RejectReason.BAD_ID
    note = (
        sdk.EventBuilder(sdk.Kind(1), "hi")
        .tags([sdk.Tag.parse(["e", req.id])])
        .finalize(provider.keys)
    )
    wrong = parse_response(note.as_json(), request_id=req.id, buyer=buyer)
    assert isinstance(wrong, Rejection) and wrong.reason == RejectReason.WRONG_KIND


@pytest.mark.parametrize("scheme", ["nip44", "nip04"])
def test_encrypted_round_trip(
    scheme: crypto.Scheme,
    validator: RequestValidator,
    provider: NostrIdentity,
    buyer: NostrIdentity,
) -> None:
    if scheme == "nip44":
        event = build_job_request(
            buyer,
            5050,
            "secret prompt",
            bid_msat=3000,
            params={"max_tokens": 8},
            encrypt_to=provider.pubkey_hex,
            created_at=NOW,
        )
    else:  # older clients: NIP-04
        private = [["i", "secret prompt", "text"], ["param", "max_tokens", "8"], ["bid", "3000"]]
        content = crypto.encrypt(buyer, provider.pubkey_hex, compact_json(private), "nip04")
        tags = [sdk.Tag.parse(["p", provider.pubkey_hex]), sdk.Tag.parse(["encrypted"])]
        event = (
            sdk.EventBuilder(sdk.Kind(5050), content)
            .tags(tags)
            .custom_created_at(sdk.Timestamp.from_secs(NOW))  # the validator's clock, not now
            .finalize(buyer.keys)
        )
    assert "secret prompt" not in _text(event)
    req = _accept(validator, event)
    assert req.encrypted and req.scheme == scheme
    assert (req.prompt, req.max_tokens, req.bid_msat) == ("secret prompt", 8, 3000)
    result = nip90.build_result(provider, req, "secret answer", amount_msat=3000)
    assert "secret answer" not in result.json and "secret prompt" not in result.json
    got = parse_response(result.json, request_id=req.id, buyer=buyer)
    assert isinstance(got, JobResult) and got.encrypted and got.content == "secret answer"


def test_checks_run_cheapest_first(validator: RequestValidator, buyer: NostrIdentity) -> None:
    other = generate_identity().pubkey_hex
    # wrong kind AND not for us AND too old AND no bid: the kind is checked first
    stale = sdk.EventBuilder(sdk.Kind(1), "").tags([sdk.Tag.parse(["p", other])])
    stale = stale.custom_created_at(sdk.Timestamp.from_secs(NOW - 10_000))
    assert _reject(validator, stale.finalize(buyer.keys)) == RejectReason.WRONG_KIND
    # not for us AND too old AND no bid: the target is next
    stale = sdk.EventBuilder(sdk.Kind(5050), "").tags([sdk.Tag.parse(["p", other])])
    stale = stale.custom_created_at(sdk.Timestamp.from_secs(NOW - 10_000))
    assert _reject(validator, stale.finalize(buyer.keys)) == RejectReason.NOT_FOR_US
    # too old AND no bid AND bad signature: freshness before bid before signature
    old = json.loads(
        sdk.EventBuilder(sdk.Kind(5050), "")
        .custom_created_at(sdk.Timestamp.from_secs(NOW - 10_000))
        .finalize(buyer.keys)
        .as_json()
    )
    old["sig"] = "0" * 128
    assert _reject(validator, json.dumps(old)) == RejectReason.TOO_OLD
    old["created_at"] = NOW
    assert _reject(validator, json.dumps(old)) == RejectReason.NO_BID


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ([["bid", "12abc"]], RejectReason.BAD_BID),
        ([["bid", "-5"]], RejectReason.BAD_BID),
        ([["bid", "1" * 40]], RejectReason.BAD_BID),
        ([["bid", "5000"]], RejectReason.MALFORMED),  # no input
        (
            [["bid", "5000"], ["i", "x", "text"], ["param", "temperature", "nan"]],
            RejectReason.MALFORMED,
        ),
        ([["bid", "5000"], ["i", "x", "text"], ["param", "top_p", "0"]], RejectReason.MALFORMED),
        (
            [["bid", "5000"], ["i", "x", "text"], ["param", "max_tokens", "0"]],
            RejectReason.MALFORMED,
        ),
        ([["bid", "5000"], ["i", "x", "text"], ["expiration", "soon"]], RejectReason.MALFORMED),
        ([["bid", "5000"], ["i", "x", "text"], ["encrypted"]], RejectReason.NOT_FOR_US),
    ],
)
def test_bad_fields(
    tags: list[list[str]], reason: RejectReason, validator: RequestValidator, buyer: NostrIdentity
) -> None:
    event = sdk.EventBuilder(sdk.Kind(5050), "").tags([sdk.Tag.parse(t) for t in tags])
    event = event.custom_created_at(sdk.Timestamp.from_secs(NOW)).finalize(buyer.keys)
    assert _reject(validator, event) == reason
    assert validator.counters[reason] == 1


def test_forged_requests_cannot_spend_a_buyers_allowance(
    provider: NostrIdentity, buyer: NostrIdentity
) -> None:
    validator = RequestValidator(provider, IntakePolicy(buyer_burst=2, buyer_refill_per_s=0.5))

    def request(at: int) -> SignedEvent:
        return build_job_request(buyer, 5050, "q", bid_msat=5000, created_at=at)

    for _ in range(50):  # an attacker replays the buyer's pubkey with bad signatures
        forged = event_json(request(NOW))
        forged["sig"] = "1" * 128
        assert validator.validate(json.dumps(forged), now=NOW).reason == RejectReason.BAD_SIGNATURE  # type: ignore[union-attr]
    assert isinstance(validator.validate(request(NOW).json, now=NOW), JobRequest)
    assert isinstance(validator.validate(request(NOW).json, now=NOW), JobRequest)
    assert _reject(validator, request(NOW)) == RejectReason.RATE_LIMITED
    later = validator.validate(request(NOW + 2).json, now=NOW + 2)  # one token refilled
    assert isinstance(later, JobRequest)


def test_token_buckets_are_bounded() -> None:
    buckets = TokenBuckets(capacity=1, refill_per_s=0.0, max_keys=100)
    for n in range(1000):
        assert buckets.take(f"k{n}", 0.0)
    assert len(buckets) == 100
    assert not buckets.take("k999", 0.0) and buckets.take("k0", 0.0)  # k0 was evicted


def test_embeddings_result_format() -> None:
    content = nip90.embeddings_result([[0.25, -1.0], [3, 4.5]], "bge-tiny")
    doc = json.loads(content)
    assert doc["model"] == "bge-tiny" and doc["data"][1]["index"] == 1
    assert nip90.parse_embeddings_result(content) == [[0.25, -1.0], [3.0, 4.5]]
    assert nip90.parse_embeddings_result("nope") is None
    assert nip90.result_kind(nip90.KIND_EMBEDDINGS) == 6060


def test_lost_race_feedback(provider: NostrIdentity, buyer: NostrIdentity) -> None:
    raw = _raw(
        build_lost_race(
            buyer, request_id="a" * 64, provider=provider.pubkey_hex, result_id="b" * 64
        )
    )
    assert raw.kind == 7000 and raw.pubkey == buyer.pubkey_hex
    assert raw.first("status") == ("status", "error", "lost-race")
    assert [t[1] for t in raw.all("e")] == ["a" * 64, "b" * 64]
    assert raw.first("p") == ("p", provider.pubkey_hex)
