"""T6: a generated corpus of >= 10,000 hostile job requests, every one rejected for its reason.

Fourteen invalidity classes (RELIABILITY T6's thirteen plus undecryptable content), 720
requests each, generated from a seeded RNG with real nostr-sdk signatures; the bad-id,
bad-signature and size-cap classes mutate the JSON of validly signed requests. Each request is built so
that its class's check is the first to fail, so the reason is known; the test demands that
reason, 100 % rejection, no exception, and counters that add up per reason.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator

import nostr_sdk as sdk
import pytest

from autopilotd.nostr import crypto
from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestValidator
from autopilotd.nostr.nip90 import JobRequest
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.nostr.reasons import Rejection, RejectReason

PER_CLASS = 720
NOW = int(time.time())
POLICY = IntakePolicy(
    min_bid_msat=1000, max_age_s=600, max_future_s=120, job_ttl_s=600, buyer_burst=5
)
_FILLER = [["t", f"x{n}"] for n in range(2600)]


def _sign(
    who: NostrIdentity,
    *,
    kind: int = 5050,
    content: str = "",
    tags: list[list[str]] | None = None,
    created_at: int = NOW,
) -> str:
    builder = sdk.EventBuilder(sdk.Kind(kind), content).tags([sdk.Tag.parse(t) for t in tags or []])
    builder = builder.custom_created_at(sdk.Timestamp.from_secs(created_at))
    event: sdk.Event = builder.finalize(who.keys)
    return event.as_json()


class Corpus:
    """Generators of hostile requests, one per class, addressed to `provider`."""

    def __init__(self, provider: NostrIdentity, seed: int = 90) -> None:
        self.provider = provider
        self.rng = random.Random(seed)
        self.buyers = [generate_identity() for _ in range(40)]
        self.others = [generate_identity() for _ in range(5)]
        self.spammer = generate_identity()

    def buyer(self) -> NostrIdentity:
        return self.rng.choice(self.buyers)

    def good_tags(self, bid: int | None = None) -> list[list[str]]:
        bid = self.rng.randint(1000, 10**9) if bid is None else bid
        return [
            ["i", f"prompt {self.rng.random()}", "text"],
            ["param", "max_tokens", str(self.rng.randint(1, 512))],
            ["bid", str(bid)],
        ]

    def valid(self, who: NostrIdentity | None = None) -> str:
        return _sign(who or self.buyer(), tags=self.good_tags())

    # -- the classes ------------------------------------------------------------------

    # The two size-cap classes are refused before anything else is read, signature included,
    # so they grow the JSON of a signed request instead of signing 70 KiB each (20 ms apiece).

    def oversized(self) -> str:
        event = json.loads(self.valid())
        event["content"] = "A" * self.rng.randint(64 * 1024 + 1, 80 * 1024)
        return json.dumps(event)

    def too_many_tags(self) -> str:
        event = json.loads(self.valid())
        count = self.rng.randint(POLICY.caps.max_tags + 1, 2600)
        event["tags"] += _FILLER[: count - len(event["tags"])]
        return json.dumps(event)

    def tag_too_long(self) -> str:
        cap = POLICY.caps.max_tag_value_bytes
        if self.rng.random() < 0.5:
            value = "x" * self.rng.randint(cap + 1, 4 * cap)
        else:  # fewer characters than the cap, more bytes
            value = "é" * self.rng.randint(cap // 2 + 1, cap)
        tags = self.good_tags()
        tags.insert(self.rng.randrange(len(tags) + 1), ["param", "model", value])
        return _sign(self.buyer(), tags=tags)

    def wrong_kind(self) -> str:
        kind = self.rng.choice([k for k in range(0, 65536, 7) if k not in POLICY.served_kinds])
        return _sign(self.buyer(), kind=kind, tags=self.good_tags())

    def other_provider(self) -> str:
        targets = self.rng.sample(self.others, self.rng.randint(1, 3))
        tags = self.good_tags() + [["p", o.pubkey_hex] for o in targets]
        return _sign(self.buyer(), tags=tags)

    def too_old(self) -> str:
        age = POLICY.max_age_s + 1 + self.rng.randint(0, 10**7)
        return _sign(self.buyer(), tags=self.good_tags(), created_at=NOW - age)

    def from_future(self) -> str:
        ahead = POLICY.max_future_s + 1 + self.rng.randint(0, 10**7)
        return _sign(self.buyer(), tags=self.good_tags(), created_at=NOW + ahead)

    def expired(self) -> str:
        tags = [*self.good_tags(), ["expiration", str(NOW - self.rng.randint(0, 500))]]
        return _sign(self.buyer(), tags=tags, created_at=NOW - self.rng.randint(0, 500))

    def missing_bid(self) -> str:
        tags = [t for t in self.good_tags() if t[0] != "bid"]
        if self.rng.random() < 0.3:
            tags.append(["bid"])  # a bid tag without an amount is no bid
        return _sign(self.buyer(), tags=tags)

    def bid_too_low(self) -> str:
        return _sign(self.buyer(), tags=self.good_tags(bid=self.rng.randint(0, 999)))

    def rate_limited(self) -> str:
        return self.valid(self.spammer)

    def bad_id(self) -> str:
        event = json.loads(self.valid())
        how = self.rng.randrange(4)
        if how == 0:
            event["content"] = "changed after signing"
        elif how == 1:
            event["tags"][0][1] = "a different prompt"
        elif how == 2:
            event["created_at"] -= self.rng.randint(1, 100)
        else:
            event["id"] = f"{self.rng.getrandbits(256):064x}"
        return json.dumps(event)

    def bad_signature(self) -> str:
        event = json.loads(self.valid())
        how = self.rng.randrange(3)
        if how == 0:
            event["sig"] = f"{self.rng.getrandbits(512):0128x}"
        elif how == 1:
            pos = self.rng.randrange(128)
            flipped = "0" if event["sig"][pos] != "0" else "1"
            event["sig"] = event["sig"][:pos] + flipped + event["sig"][pos + 1 :]
        else:
            event["sig"] = json.loads(self.valid())["sig"]  # a real signature, another event
        return json.dumps(event)

    def undecryptable(self) -> str:
        who = self.buyer()
        how = self.rng.randrange(4)
        if how == 0:
            content = base64.b64encode(self.rng.randbytes(self.rng.randint(0, 300))).decode()
        elif how == 1:
            content = "".join(chr(self.rng.randint(32, 0x2FF)) for _ in range(40))
        elif how == 2:  # real NIP-44, but for another provider
            content = crypto.encrypt(who, self.others[0].pubkey_hex, '[["bid","5000"]]')
        else:  # real NIP-04, but for another provider
            content = crypto.encrypt(who, self.others[1].pubkey_hex, "[]", "nip04")
        tags = [["p", self.provider.pubkey_hex], ["encrypted"]]
        return _sign(who, content=content, tags=tags)


CLASSES: list[tuple[str, RejectReason]] = [
    ("oversized", RejectReason.TOO_LARGE),
    ("too_many_tags", RejectReason.TOO_MANY_TAGS),
    ("tag_too_long", RejectReason.TAG_TOO_LONG),
    ("wrong_kind", RejectReason.WRONG_KIND),
    ("other_provider", RejectReason.NOT_FOR_US),
    ("too_old", RejectReason.TOO_OLD),
    ("from_future", RejectReason.FROM_FUTURE),
    ("expired", RejectReason.EXPIRED),
    ("missing_bid", RejectReason.NO_BID),
    ("bid_too_low", RejectReason.BID_TOO_LOW),
    ("rate_limited", RejectReason.RATE_LIMITED),
    ("bad_id", RejectReason.BAD_ID),
    ("bad_signature", RejectReason.BAD_SIGNATURE),
    ("undecryptable", RejectReason.UNDECRYPTABLE),
]


def corpus(gen: Corpus, per_class: int) -> Iterator[tuple[str, RejectReason, str]]:
    """(class, expected reason, event JSON), classes interleaved like a real flood."""
    makers: list[tuple[str, RejectReason, Callable[[], str]]] = [
        (name, reason, getattr(gen, name)) for name, reason in CLASSES
    ]
    for _ in range(per_class):
        for name, reason, make in makers:
            yield name, reason, make()


@pytest.fixture
def validator(provider: NostrIdentity) -> RequestValidator:
    return RequestValidator(provider, POLICY, clock=lambda: NOW)


def test_valid_requests_pass_so_the_corpus_means_something(
    provider: NostrIdentity, validator: RequestValidator
) -> None:
    gen = Corpus(provider)
    for _ in range(20):
        assert isinstance(validator.validate(gen.valid()), JobRequest)
    secret = build_job_request(
        gen.buyer(), 5050, "hidden", bid_msat=5000, encrypt_to=provider.pubkey_hex, created_at=NOW
    )
    opened = validator.validate(secret.json)
    assert isinstance(opened, JobRequest) and opened.prompt == "hidden" and opened.encrypted


def test_t6_hostile_corpus_is_rejected_with_the_right_reason(
    provider: NostrIdentity, validator: RequestValidator
) -> None:
    gen = Corpus(provider)
    for _ in range(POLICY.buyer_burst):  # the spammer spends its burst on valid requests
        assert isinstance(validator.validate(gen.valid(gen.spammer)), JobRequest)
    accepted_before = validator.counters.accepted

    started = time.perf_counter()
    validating = 0.0
    seen: Counter[str] = Counter()
    wrong: list[tuple[str, str]] = []
    for name, expected, event in corpus(gen, PER_CLASS):
        t0 = time.perf_counter()
        outcome = validator.validate(event)  # any exception fails the test: none allowed
        validating += time.perf_counter() - t0
        seen[name] += 1
        if not isinstance(outcome, Rejection) or outcome.reason != expected:
            wrong.append((name, str(outcome)[:200]))
    elapsed = time.perf_counter() - started

    total = sum(seen.values())
    assert total == PER_CLASS * len(CLASSES) >= 10_000
    assert wrong == []
    assert validator.counters.accepted == accepted_before
    counts = validator.counters.snapshot()
    for _, reason in CLASSES:
        assert counts[reason.value] == PER_CLASS, reason
    assert validator.counters.rejected == total
    print(
        f"T6: {total} hostile requests over {len(CLASSES)} classes, 100% rejected "
        f"with the expected reason; {elapsed:.1f} s with generation, {validating:.2f} s "
        f"validating; {counts}"
    )
