"""The NIP-90 fine-tuning kind's format (kind 5740): a dataset inline over many 1 KiB tags or
by digest, the training params, and a malformed request refused with its reason."""

from __future__ import annotations

import hashlib
import json

import pytest

from autopilotd.nostr.identity import generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestParser
from autopilotd.nostr.nip90 import KIND_FINETUNE, SERVED_KINDS, JobInput, JobRequest
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.nostr.nip90_finetune import (
    CHUNK,
    INLINE_MAX,
    FinetuneSpec,
    parse_result,
    price_msat,
    result_content,
    spec_from_request,
)

LINE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ARR"}]}
TRAIN = ("\n".join(json.dumps(LINE) for _ in range(60)) + "\n").encode()


def _parse(items: list[JobInput], params: dict[str, str | int | float]) -> JobRequest:
    buyer, provider = generate_identity(), generate_identity()
    event = build_job_request(buyer, KIND_FINETUNE, items, bid_msat=50_000, params=params)
    assert all(len(v) <= 1024 for t in event.tags for v in t)
    policy = IntakePolicy(served_kinds=SERVED_KINDS | {KIND_FINETUNE})
    request = RequestParser(provider, policy).parse(event, now=event.created_at)
    assert isinstance(request, JobRequest), request
    return request


def test_a_spec_round_trips_inline_and_by_digest() -> None:
    holdout = TRAIN[:200]
    spec = FinetuneSpec.inline(
        TRAIN,
        holdout,
        base_model="smollm2-135m-instruct",
        suffix="pirate",
        hyperparameters={"n_epochs": 2, "learning_rate": 0.002},
    )
    items = spec.inputs()
    assert len(items) == -(-len(TRAIN) // CHUNK) + 1
    found = spec_from_request(_parse(items, spec.params()))
    assert found == spec
    assert found.digests["train"] == hashlib.sha256(TRAIN).hexdigest()
    by_digest = FinetuneSpec({"train": None}, {"train": spec.digests["train"]})
    assert spec_from_request(_parse(by_digest.inputs(), {})) == by_digest
    # the base price for each started 4 KiB, per epoch
    assert price_msat(10, spec) == 10 * 1000 * -(-(len(TRAIN) + len(holdout)) // 4096) * 2


@pytest.mark.parametrize(
    ("inputs", "params", "why"),
    [
        ([("eA==", "file:a")], {}, "every input must be a dataset"),
        ([("eA==", "dataset:holdout")], {}, "a dataset:train input is required"),
        ([("!!", "dataset:train")], {}, "is not base64"),
        ([("sha256:abc", "dataset:train")], {}, "64 lowercase hex"),
        ([("sha256:" + "a" * 64, "dataset:train"), ("eA==", "dataset:train")], {}, "twice"),
        ([("eA==", "dataset:train")], {"n_epochs": "0"}, "n_epochs must be between"),
        ([("eA==", "dataset:train")], {"learning_rate": "nan"}, "learning_rate must be"),
        ([("eA==", "dataset:train")], {"suffix": "Bad Name"}, "suffix must be"),
    ],
)
def test_a_malformed_request_says_why(
    inputs: list[tuple[str, str]], params: dict[str, str | int | float], why: str
) -> None:
    items = [JobInput(data, "text", marker=marker) for data, marker in inputs]
    found = spec_from_request(_parse(items, params))
    assert isinstance(found, str) and why in found, found


def test_too_much_inline_data_is_refused_before_anything_runs() -> None:
    spec = FinetuneSpec.inline(b"x" * (INLINE_MAX + 1))
    found = spec_from_request(_request_of(spec))
    assert isinstance(found, str) and "send a digest instead" in found


def _request_of(spec: FinetuneSpec) -> JobRequest:
    # Too big for one event: the parser sees the request as a relay would hand it over.
    return JobRequest(
        id="0" * 64,
        pubkey="1" * 64,
        kind=KIND_FINETUNE,
        created_at=0,
        expires_at=60,
        bid_msat=1,
        inputs=tuple(spec.inputs()),
    )


def test_a_result_round_trips() -> None:
    job = {"id": "ftjob-1", "status": "succeeded", "fine_tuned_model": "ft:m:t:s", "model": "m"}
    content = result_content(job, "http://127.0.0.1:1/v1/x", "key")
    doc = parse_result(content)
    assert doc is not None and doc["fetch"] == {"url": "http://127.0.0.1:1/v1/x", "key": "key"}
    assert parse_result("[]") is None and parse_result("{") is None
