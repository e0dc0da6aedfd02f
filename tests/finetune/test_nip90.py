"""Fine-tuning sold over NIP-90 (kind 5740), with the real provider and buyer and fakes at the
wallet, relay and trainer ports: a paid job whose adapter the buyer fetches with the key in the
result, a dataset named by digest, refusals before anything runs, a key that opens one job's
adapter and nothing else, and a job that fails told as an error, never invoiced."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.market import Market, Peer

from autopilotd.adapters.fake_trainer import FakeTrainer
from autopilotd.commands.buyer import finetune_spec
from autopilotd.errors import InvalidParams
from autopilotd.finetune.nip90 import FinetuneWork
from autopilotd.finetune.service import FinetuneService
from autopilotd.nostr.identity import generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestParser
from autopilotd.nostr.nip90 import KIND_FEEDBACK, KIND_FINETUNE, KIND_HANDLER, JobRequest
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.nostr.nip90_finetune import FinetuneSpec, parse_result, spec_from_request
from autopilotd.ports.jobs import WorkFailed
from autopilotd.runtime.sections import ProviderState

PRICE = 10  # provider_finetune_price_sats, the default
EXAMPLE = {
    "messages": [
        {"role": "user", "content": "What colour is the sky?"},
        {"role": "assistant", "content": "Blue."},
    ]
}
TRAIN = "".join(json.dumps(EXAMPLE) + "\n" for _ in range(3))
BIG = "".join(json.dumps(EXAMPLE) + "\n" for _ in range(50))  # over 4 KiB: two price steps
DIGEST = hashlib.sha256(BIG.encode()).hexdigest()


@pytest.fixture
def market(tmp_path: Path) -> Market:
    return Market(tmp_path)


async def online(provider: Peer) -> None:
    await provider.call("provider.online")
    await provider.until(lambda s: s.provider.state is ProviderState.ONLINE)
    await provider.until(lambda s: KIND_FINETUNE in s.provider.served_kinds)


async def wait_done(buyer: Peer, rid: str) -> dict[str, Any]:
    for _ in range(30):
        row: dict[str, Any] = await buyer.call("buy.wait", {"request_id": rid, "timeout_s": 5})
        if row["status"] in ("done", "failed", "expired"):
            return row
    raise AssertionError(f"request {rid} did not end")


async def buy(buyer: Peer, train: str = TRAIN, **params: str) -> str:
    row = await buyer.call(
        "buy.submit",
        {
            "kind": KIND_FINETUNE,
            "prompt": train,
            "params": {"n_epochs": "1", **params},
            "budget_sats": 5 * PRICE,
            "timeout_s": 600,
        },
    )
    return str(row["request_id"])


async def fetch(url: str, key: str, path: str | None = None) -> tuple[int, bytes]:
    if path is not None:  # another route of the same API
        url = url.split("/v1/")[0] + path
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        return resp.status, await resp.read()


def finetune(provider: Peer) -> FinetuneService:
    found: FinetuneService = provider.service("finetune")
    return found


def work(provider: Peer) -> FinetuneWork:
    found = provider.service("provider").works.get(KIND_FINETUNE)
    assert isinstance(found, FinetuneWork)
    return found


def parsed(buyer_key: Any, spec: FinetuneSpec, expires_at: int | None = None) -> JobRequest:
    event = build_job_request(
        buyer_key,
        KIND_FINETUNE,
        spec.inputs(),
        bid_msat=100_000,
        params=spec.params(),
        expires_at=expires_at,
    )
    request = RequestParser(generate_identity(), IntakePolicy()).parse(event, now=event.created_at)
    assert isinstance(request, JobRequest)
    return request


async def test_a_buyer_pays_for_a_fine_tuning_job_and_fetches_its_adapter(
    market: Market,
) -> None:
    trainer = FakeTrainer()
    async with (
        market.peer("provider", trainer=trainer, finetune_poll_s=0.05) as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await online(provider)
        handlers = [e for e in market.relays.published if e.kind == KIND_HANDLER]
        assert ["k", str(KIND_FINETUNE)] in [list(t) for t in handlers[-1].tags]
        rid = await buy(buyer, suffix="sky")
        done = await wait_done(buyer, rid)
        assert done["status"] == "done", done
        result = parse_result(done["result"])
        assert result is not None and result["outcome"] == "succeeded"
        assert result["base_model"] == "fake-chat" and result["fetch"]["key"].startswith("ftk-")
        # the money: the provider's earnings are the wallet's settled payment for this job
        job = await provider.job_until(rid, "paid")
        assert job["price_sats"] == PRICE  # 3 lines, one step of 4 KiB, one epoch
        assert provider.snapshot.earnings.lifetime_sats == PRICE
        assert done["payment_hash"] == job["payment_hash"]
        # the adapter: a tar of the PEFT export whose weights have the result's digest
        status, body = await fetch(result["fetch"]["url"], result["fetch"]["key"])
        assert status == 200, body
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            names = set(tar.getnames())
            weights = tar.extractfile("adapter_model.safetensors")
            assert weights is not None
            digest = hashlib.sha256(weights.read()).hexdigest()
        assert names == {"adapter_model.safetensors", "adapter_config.json", "psionic_adapter.json"}
        assert digest == result["adapter_digest"]
        # a network job is the buyer's product: nothing was promoted into serving here
        assert trainer.adapters == {}
        ft = await provider.call("finetune.job", {"job_id": result["job"]})
        assert ft["status"] == "succeeded" and ft["fine_tuned_model"] is None


async def test_the_fetch_key_opens_its_own_jobs_adapter_once_paid_and_nothing_else(
    market: Market,
) -> None:
    async with (
        market.peer("provider", trainer=FakeTrainer(), finetune_poll_s=0.05) as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await online(provider)
        done = await wait_done(buyer, await buy(buyer))
        result = parse_result(done["result"])
        assert result is not None
        url, key = result["fetch"]["url"], result["fetch"]["key"]
        await provider.job_until(done["request_id"], "paid")
        # another network job, made here for a request that was never paid
        service = finetune(provider)
        file_id = await service.network_dataset("ee" * 32, "train", TRAIN.encode())
        other = await service.create_network_job(
            request_id="ff" * 32, buyer_pubkey="ee" * 32, model="fake-chat", training_file=file_id
        )
        other = await service.wait_ended(other.id, 10)
        assert other.status == "succeeded"
        other_url = url.replace(result["job"], other.id)
        assert (await fetch(other_url, key))[0] == 401  # this key opens its own job only
        for path in ("/v1/files", f"/v1/fine_tuning/jobs/{result['job']}", "/v1/models"):
            assert (await fetch(url, key, path))[0] == 401
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url.split("/v1/")[0] + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]},
            ) as resp,
        ):
            assert resp.status == 401
        other_key = await service.fetch_key(other)  # its job was never paid
        status, body = await fetch(other_url, other_key)
        assert status == 409 and json.loads(body)["error"]["code"] == "payment_required"
        assert (await fetch(url, "ftk-" + "x" * 43))[0] == 401  # a made-up key
        assert (await fetch(url, key))[0] == 200  # and the right one still works


async def test_a_dataset_by_digest_works_for_its_own_buyer_and_is_refused_otherwise(
    market: Market,
) -> None:
    trainer = FakeTrainer()
    async with (
        market.peer("provider", trainer=trainer, finetune_poll_s=0.05) as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
        market.peer("other", balance_msat=10_000_000) as other,
    ):
        await online(provider)
        first = await wait_done(buyer, await buy(buyer, BIG))
        assert first["status"] == "done", first
        assert (await provider.job(first["request_id"]) or {})["price_sats"] == 2 * PRICE
        # the same buyer names the dataset by digest: it trains again on what it sent
        again = await wait_done(buyer, await buy(buyer, f"sha256:{DIGEST}"))
        assert again["status"] == "done", again
        result = parse_result(again["result"])
        assert result is not None and result["outcome"] == "succeeded"
        ran = trainer.jobs[result["job"]]
        assert ran.spec.train == BIG
        # priced by the size kept, as it was inline
        assert (await provider.job(again["request_id"]) or {})["price_sats"] == 2 * PRICE
        created = len(trainer.created)
        # another buyer's digest, or one nobody sent: refused at intake, before anything runs
        theirs = await buy(other, f"sha256:{DIGEST}")
        unknown = await buy(buyer, "sha256:" + "0" * 64)
        await provider.until(lambda s: s.jobs.rejections.get("malformed", 0) >= 2)
        assert await provider.job(theirs) is None and await provider.job(unknown) is None
        assert len(trainer.created) == created
        # the reason, as the provider's intake gives it
        spec = FinetuneSpec({"train": None}, {"train": DIGEST})
        why = work(provider).price_msat(parsed(generate_identity(), spec))
        assert isinstance(why, str) and "is not one this buyer sent here" in why


async def test_a_malformed_request_is_refused_before_anything_runs(market: Market) -> None:
    trainer = FakeTrainer()
    async with (
        market.peer("provider", trainer=trainer, finetune_poll_s=0.05) as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await online(provider)
        epochs = await buy(buyer, n_epochs="999")
        cheap = await buyer.call(
            "buy.submit",
            {"kind": KIND_FINETUNE, "prompt": TRAIN, "budget_sats": 1, "timeout_s": 5},
        )  # three epochs of one step: 30 sats asked, 1 bid
        await provider.until(
            lambda s: (
                s.jobs.rejections.get("malformed", 0) >= 1
                and s.jobs.rejections.get("bid-below-minimum", 0)
                + s.jobs.rejections.get("bid-too-low", 0)
                >= 1
            )
        )
        assert await provider.job(epochs) is None
        assert await provider.job(cheap["request_id"]) is None
        assert trainer.created == [] and await finetune(provider).records.jobs() == []
        spec = FinetuneSpec.inline(TRAIN.encode(), hyperparameters={"n_epochs": 999})
        why = work(provider).price_msat(parsed(generate_identity(), spec))
        assert why == "param n_epochs must be between 1 and 20"


async def test_a_job_that_fails_is_an_error_to_its_buyer_and_never_invoiced(
    market: Market,
) -> None:
    trainer = FakeTrainer(fail_with={"message": "loss went to NaN", "code": "diverged"})
    async with (
        market.peer("provider", trainer=trainer, finetune_poll_s=0.05) as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await online(provider)
        rid = await buy(buyer)
        job = await provider.job_until(rid, "failed")
        assert "loss went to NaN" in job["reason"] and job["payment_hash"] is None

        def told() -> bool:  # kind 7000 `error` to the buyer, with the reason
            return any(
                e.kind == KIND_FEEDBACK
                and ["e", rid] in [list(t[:2]) for t in e.tags]
                and (status := e.first("status")) is not None
                and len(status) > 2
                and status[1] == "error"
                and "NaN" in status[2]
                for e in market.relays.published
            )

        await provider.until(lambda s: told())
        assert not [e for e in market.relays.published if e.kind == KIND_FINETUNE + 1000]
        row = await buyer.call("buy.status", {"request_id": rid})
        assert row["status"] != "done" and row["payment_hash"] is None
        assert provider.snapshot.earnings.lifetime_sats == 0


async def test_a_request_made_again_is_the_same_job_and_one_past_its_expiry_is_cancelled(
    market: Market,
) -> None:
    trainer = FakeTrainer(autoplay=False)  # it trains until the test says so: never, here
    async with market.peer("provider", trainer=trainer, finetune_poll_s=0.05) as provider:
        service = finetune(provider)
        spec = FinetuneSpec.inline(TRAIN.encode(), hyperparameters={"n_epochs": 1})
        # alive when parsed (at the real time it was signed), then a second from expiring on
        # the provider's clock
        expires_at = int(market.clock.now()) + 600
        request = parsed(generate_identity(), spec, expires_at=expires_at)
        market.clock.advance(expires_at - 1 - market.clock.now())
        with pytest.raises(WorkFailed, match="did not finish before the request expired"):
            await work(provider).execute(request)
        # the flow asks again after a restart: the same job, not a second one
        with pytest.raises(WorkFailed, match="cancelled"):
            await work(provider).execute(request)
        [job] = await service.records.jobs()
        # a job psionic had queued ends cancelled once the follow loop hears psionic stop it
        job = await service.wait_ended(job.id, 10)
        assert job.status == "cancelled" and len(trainer.created) <= 1
        assert await service.records.network_job_for(request.id) == job.id


async def test_the_network_tenants_quota_refuses_at_intake_and_then_withdraws_the_kind(
    market: Market,
) -> None:
    """While the network's one active job trains, another request is refused at intake (not
    accepted and failed); once its jobs quota is spent, the kind is no longer offered."""
    trainer = FakeTrainer(autoplay=False)
    async with market.peer("provider", trainer=trainer, finetune_poll_s=0.05) as provider:
        await online(provider)
        service = finetune(provider)
        spec = FinetuneSpec.inline(TRAIN.encode(), hyperparameters={"n_epochs": 1})
        first = parsed(generate_identity(), spec, expires_at=int(market.clock.now()) + 600)
        assert isinstance(work(provider).price_msat(first), int)
        await service.create_network_job(
            request_id=first.id,
            buyer_pubkey=first.pubkey,
            model="fake-chat",
            training_file=await service.network_dataset(first.pubkey, "train", TRAIN.encode()),
        )
        why = work(provider).price_msat(parsed(generate_identity(), spec))
        assert isinstance(why, str) and why.startswith("busy:"), why
        assert work(provider).refusal() is None
        await provider.call("finetune.quota.set", {"tenant": "network", "jobs": 1})
        refusal = work(provider).refusal()
        assert refusal is not None and "finetune.quota.set --tenant network" in refusal
        await provider.until(lambda s: KIND_FINETUNE not in s.provider.served_kinds)
        await provider.call("finetune.quota.set", {"tenant": "network", "jobs": 5})
        assert work(provider).refusal() is None


def test_buy_submit_builds_the_spec_from_its_arguments() -> None:
    holdout = json.dumps(EXAMPLE) + "\n"
    spec = finetune_spec(
        TRAIN,
        {"holdout": base64.b64encode(holdout.encode()).decode()},
        {"n_epochs": "2", "learning_rate": "0.001", "suffix": "sky", "base_model": "fake-chat"},
    )
    assert spec.data == {"train": TRAIN.encode(), "holdout": holdout.encode()}
    assert spec.hyperparameters == {"n_epochs": 2, "learning_rate": 0.001}
    assert (spec.suffix, spec.base_model) == ("sky", "fake-chat")
    named = finetune_spec(f" sha256:{DIGEST}\n", {}, {})
    assert named.data == {"train": None} and named.digests == {"train": DIGEST}
    request = parsed(generate_identity(), spec)
    assert spec_from_request(request) == spec  # what the provider reads back
    for files, params in (
        ({"other": "eA=="}, {}),
        ({}, {"lora_dropout": "0.1"}),
        ({}, {"n_epochs": "x"}),
    ):
        with pytest.raises(InvalidParams):
            finetune_spec(TRAIN, files, params)
