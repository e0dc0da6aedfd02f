"""T7 (CI budget): fuzz the event parser, tags and bid, and NIP-44/NIP-04 decryption.

The contract under test: untrusted input never raises. `validate` returns a `JobRequest` or a
`Rejection`; `parse_response` a feedback, a result or a `Rejection`; `crypto.decrypt` text or
None. 250 examples per property keep the folder fast (the CI budget).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import nostr_sdk as sdk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopilotd.nostr import crypto
from autopilotd.nostr.events import parse_raw
from autopilotd.nostr.identity import generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestValidator
from autopilotd.nostr.nip90 import JobRequest
from autopilotd.nostr.nip90_buyer import JobFeedback, JobResult, parse_response
from autopilotd.nostr.reasons import Rejection

NOW = int(time.time())
PROVIDER = generate_identity()
BUYER = generate_identity()
FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# every code point, lone surrogates included: JSON can carry them as escapes
any_text = st.text(st.characters(codec=None, categories=None), max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=20,
)
hexish = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.text("0123456789abcdefABCDEF", max_size=130),
    any_text,
)
tag_values = st.one_of(
    st.sampled_from(["i", "p", "e", "bid", "param", "expiration", "encrypted", "relays", "output"]),
    st.sampled_from(["", "0", "-1", "1e3", "0x10", " 5000", "5000 ", "١٢٣", "9" * 25, "nan"]),
    any_text,
)
tags = st.lists(st.lists(tag_values, max_size=5), max_size=12)
events = st.fixed_dictionaries(
    {},
    optional={
        "id": hexish,
        "pubkey": st.one_of(hexish, st.just(BUYER.pubkey_hex)),
        "created_at": st.one_of(st.integers(), st.just(NOW), json_values),
        "kind": st.one_of(st.sampled_from([5050, 5060, 7000, 6050]), st.integers(), json_values),
        "tags": st.one_of(tags, json_values),
        "content": st.one_of(any_text, json_values),
        "sig": hexish,
        "extra": json_values,
    },
)


def _outcome_ok(outcome: object) -> bool:
    return isinstance(outcome, JobRequest | Rejection)


def _validator() -> RequestValidator:
    return RequestValidator(PROVIDER, IntakePolicy(min_bid_msat=0), clock=lambda: NOW)


@FUZZ
@given(events)
def test_validate_event_objects(event: dict[str, Any]) -> None:
    validator = _validator()
    assert _outcome_ok(validator.validate(event))
    try:
        text = json.dumps(event)
    except ValueError:
        return
    assert _outcome_ok(validator.validate(text))
    assert _outcome_ok(validator.validate(text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(st.one_of(any_text, st.binary(max_size=200), json_values.map(json.dumps)))
def test_validate_arbitrary_text(data: str | bytes) -> None:
    assert _outcome_ok(_validator().validate(data))
    assert isinstance(
        parse_response(data, request_id="0" * 64, buyer=BUYER),
        JobFeedback | JobResult | Rejection,
    )


@FUZZ
@given(tags, st.integers(min_value=NOW - 1000, max_value=NOW + 1000), any_text)
def test_signed_requests_with_arbitrary_tags(
    extra: list[list[str]], created_at: int, content: str
) -> None:
    """Real signatures, hostile tags: bids, params, expiration, p, encrypted in any shape."""
    try:
        parsed = [sdk.Tag.parse(t) for t in extra if t]
        event = (
            sdk.EventBuilder(sdk.Kind(5050), content)
            .tags([sdk.Tag.parse(["i", "x", "text"]), *parsed])
            .custom_created_at(sdk.Timestamp.from_secs(created_at))
            .finalize(BUYER.keys)
        )
    except Exception:  # the SDK refuses some inputs (lone surrogates): nothing to send then
        return
    outcome = _validator().validate(event.as_json())
    assert _outcome_ok(outcome)
    if isinstance(outcome, JobRequest):
        assert outcome.bid_msat >= 0 and outcome.inputs
        assert outcome.created_at == created_at


@FUZZ
@given(
    st.one_of(
        any_text,
        st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
        st.binary(max_size=300).map(lambda b: base64.b64encode(b"\x02" + b).decode()),
        st.tuples(st.binary(max_size=64), st.binary(min_size=16, max_size=16)).map(
            lambda p: f"{base64.b64encode(p[0]).decode()}?iv={base64.b64encode(p[1]).decode()}"
        ),
    ),
    st.one_of(st.just(BUYER.pubkey_hex), hexish),
)
def test_decrypt_never_raises(payload: str, sender: str) -> None:
    opened = crypto.decrypt(PROVIDER, sender, payload)
    assert opened is None or (isinstance(opened[0], str) and opened[1] in ("nip44", "nip04"))


@FUZZ
@given(any_text, st.sampled_from(["nip44", "nip04"]))
def test_encrypted_requests_with_hostile_plaintext(plaintext: str, scheme: crypto.Scheme) -> None:
    """The decrypted content is as untrusted as the rest: any plaintext fails closed."""
    try:
        content = crypto.encrypt(BUYER, PROVIDER.pubkey_hex, plaintext, scheme)
    except Exception:
        return  # not encodable (lone surrogates)
    event = (
        sdk.EventBuilder(sdk.Kind(5050), content)
        .tags([sdk.Tag.parse(["p", PROVIDER.pubkey_hex]), sdk.Tag.parse(["encrypted"])])
        .custom_created_at(sdk.Timestamp.from_secs(NOW))
        .finalize(BUYER.keys)
    )
    assert _outcome_ok(_validator().validate(event.as_json()))


@FUZZ
@given(events)
def test_parse_raw_never_raises(event: dict[str, Any]) -> None:
    parse_raw(event)
