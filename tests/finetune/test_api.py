"""The tenant API with the official `openai` client, against a daemon whose trainer is the
fake: the whole path from a file to a chat with the promoted model, and every refusal."""

from __future__ import annotations

import asyncio
import io
import tarfile

import aiohttp
import openai
import pytest

from autopilotd.adapters.fake_trainer import FakeTrainer

from .conftest import BASE_MODEL, EXAMPLE, HOLDOUT, FineTuning, jsonl, upload


async def test_upload_train_promote_and_chat_with_the_openai_client(ft: FineTuning) -> None:
    """upload → job → events → succeeded → promote → /v1/models shows it → a chat completion
    goes to psionic (the fake) for that model, served at the promoted revision."""
    client = await ft.tenant("acme")
    train = await client.files.create(file=upload(jsonl(EXAMPLE, EXAMPLE)), purpose="fine-tune")
    holdout = await client.files.create(file=upload(jsonl(HOLDOUT)), purpose="fine-tune")
    assert train.status == "processed" and train.bytes == len(jsonl(EXAMPLE, EXAMPLE))
    assert (await client.files.content(train.id)).content == jsonl(EXAMPLE, EXAMPLE)
    job = await client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=train.id,
        hyperparameters={"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 0.5},
        suffix="sky",
        seed=7,
        extra_body={"holdout_file": holdout.id, "psionic_hyperparameters": {"lora_r": 4}},
    )
    assert job.status == "validating_files" and job.seed == 7
    shown = await ft.ended(job.id)
    assert shown["status"] == "succeeded", shown["error"]
    spec = ft.trainer.jobs[job.id].spec
    assert spec.holdout and spec.hyperparameters["lora_r"] == 4
    assert spec.hyperparameters["n_epochs"] == 2 and spec.hyperparameters["seed"] == 7

    retrieved = await client.fine_tuning.jobs.retrieve(job.id)
    assert retrieved.status == "succeeded" and retrieved.fine_tuned_model is None
    assert retrieved.trained_tokens == 2 * 6 * 2  # two examples of 6 words, two epochs
    events = await client.fine_tuning.jobs.list_events(job.id, limit=100)
    messages = [e.message for e in events.data]
    assert messages[0] == "The job has successfully completed"
    assert messages[-1] == "Validating training file"
    assert any(e.type == "metrics" and e.data["step"] == 4 for e in events.data)
    first = await client.fine_tuning.jobs.list_events(job.id, limit=2)
    older = await client.fine_tuning.jobs.list_events(job.id, limit=2, after=first.data[-1].id)
    assert first.has_more and [e.id for e in first.data + older.data] == [
        e.id for e in events.data[:4]
    ]
    checkpoints = await client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints.data] == [4, 2]
    assert checkpoints.data[0].metrics.train_loss == 1.0
    earlier = await client.fine_tuning.jobs.checkpoints.list(job.id, after=checkpoints.data[0].id)
    assert [c.step_number for c in earlier.data] == [2]

    promoted = await client.post(
        f"/fine_tuning/jobs/{job.id}/promote", cast_to=object, body={"step": 2}
    )
    model_id = "ft:fake-chat:acme:sky"
    assert promoted["fine_tuned_model"] == model_id  # type: ignore[index]
    assert promoted["promotion"]["state"] == "promoted"  # type: ignore[index]
    assert promoted["promotion"]["step"] == 2  # type: ignore[index]
    evals = promoted["eval"]  # type: ignore[index]
    assert evals["base"]["loss"] == 2.0 and [c["promotable"] for c in evals["checkpoints"]] == [
        True,
        True,
    ]

    models = [m.id for m in (await client.models.list()).data]
    assert models == [BASE_MODEL, model_id]
    answer = await client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "sky?"}]
    )
    assert answer.choices[0].message.content == f"fake answer from {model_id}"
    revision = ft.trainer.adapters[model_id][-1].revision
    assert answer.system_fingerprint == f"rev-{revision[:12]}"
    stream = await client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "sky?"}], stream=True
    )
    pieces = [chunk.choices[0].delta.content async for chunk in stream]
    assert "".join(p or "" for p in pieces) == f"fake answer from {model_id}"

    again = await ft.daemon.call("finetune.promote", {"job_id": job.id})  # the best: step 4
    assert again["step"] == 4 and again["previous"] == revision
    back = await ft.daemon.call("finetune.rollback", {"model": model_id})
    assert back["revision"] == revision and back["step"] == 2
    listed = await ft.daemon.call("finetune.models")
    assert [(m["id"], m["revision"]) for m in listed["models"]] == [(model_id, revision)]


async def test_a_bad_or_missing_key_is_401_in_openais_shape(ft: FineTuning) -> None:
    await ft.tenant("acme")
    bad = await ft.client("sk-ft-not-a-key")
    with pytest.raises(openai.AuthenticationError) as caught:
        await bad.files.list()
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    async with aiohttp.ClientSession() as http:
        async with http.get(await ft.api_url() + "/models") as resp:
            assert resp.status == 401
            error = (await resp.json())["error"]
            assert set(error) >= {"message", "type", "param", "code"}


async def test_a_revoked_key_is_refused(ft: FineTuning) -> None:
    made = await ft.daemon.call("finetune.tenant.create", {"tenant": "acme"})
    client = await ft.client(made["api_key"])
    assert (await client.files.list()).data == []
    await ft.daemon.call("finetune.tenant.revoke", {"tenant": "acme"})
    with pytest.raises(openai.AuthenticationError):
        await client.files.list()
    tenants = (await ft.daemon.call("finetune.tenant.list"))["tenants"]
    assert tenants[0]["revoked_at"] is not None and tenants[0]["key"] is None


async def test_a_tenant_sees_only_its_own_files_jobs_and_models(ft: FineTuning) -> None:
    acme = await ft.tenant("acme")
    other = await ft.tenant("other")
    train = await acme.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    holdout = await acme.files.create(file=upload(jsonl(HOLDOUT)), purpose="fine-tune")
    job = await acme.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=train.id, extra_body={"holdout_file": holdout.id}
    )
    await ft.ended(job.id)
    await ft.daemon.call("finetune.promote", {"job_id": job.id})

    assert (await other.files.list()).data == []
    assert (await other.fine_tuning.jobs.list()).data == []
    for call in (
        other.files.retrieve(train.id),
        other.files.content(train.id),
        other.files.delete(train.id),
        other.fine_tuning.jobs.retrieve(job.id),
        other.fine_tuning.jobs.cancel(job.id),
        other.fine_tuning.jobs.list_events(job.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    with pytest.raises(openai.NotFoundError):  # another's file named in a job
        await other.fine_tuning.jobs.create(model=BASE_MODEL, training_file=train.id)
    assert [m.id for m in (await other.models.list()).data] == [BASE_MODEL]
    own = (await acme.models.list()).data
    with pytest.raises(openai.NotFoundError):
        await other.chat.completions.create(
            model=own[1].id, messages=[{"role": "user", "content": "hi"}]
        )


async def test_a_second_active_job_is_refused_by_the_quota(
    ft: FineTuning, trainer: FakeTrainer
) -> None:
    trainer.autoplay = False  # the first job stays queued
    client = await ft.tenant("acme")
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    first = await client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=train.id)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=train.id)
    error = caught.value.body
    assert error["code"] == "quota_exceeded"  # type: ignore[index]
    assert "active jobs 2, above this tenant's quota of 1" in error["message"]  # type: ignore[index]
    assert [j.id for j in (await client.fine_tuning.jobs.list()).data] == [first.id]

    cancelled = await client.fine_tuning.jobs.cancel(first.id)
    assert cancelled.id == first.id
    assert (await ft.ended(first.id))["status"] == "cancelled"
    together = await asyncio.gather(
        client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=train.id),
        client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=train.id),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in together) == ["FineTuningJob", "RateLimitError"]


async def test_storage_and_training_token_quotas(ft: FineTuning) -> None:
    client = await ft.tenant("small", storage_bytes=200, training_tokens=10)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.files.create(file=upload(jsonl(*[EXAMPLE] * 3)), purpose="fine-tune")
    assert "storage bytes" in caught.value.body["message"]  # type: ignore[index]
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=train.id, hyperparameters={"n_epochs": 3}
    )
    failed = await ft.ended(job.id)
    assert failed["status"] == "failed" and failed["error"]["code"] == "quota_exceeded"
    assert "18 tokens" in failed["error"]["message"]
    assert job.id not in ft.trainer.jobs  # never reached the trainer


@pytest.mark.parametrize(
    ("data", "purpose", "code", "words"),
    [
        (b'{"messages": [}\n', "fine-tune", "invalid_file", "line 1: not valid JSON"),
        (
            jsonl(EXAMPLE, {"messages": [{"role": "robot", "content": "x"}]}),
            "fine-tune",
            "invalid_file",
            "line 2: message 1 has role 'robot'",
        ),
        (
            jsonl({"messages": [{"role": "user", "content": "hi"}]}),
            "fine-tune",
            "invalid_file",
            "no assistant message",
        ),
        (b"\n\n", "fine-tune", "invalid_file", "no examples"),
        (b"\xff\xfe", "fine-tune", "invalid_file", "not UTF-8"),
        (jsonl(EXAMPLE), "assistants", "invalid_purpose", "only 'fine-tune'"),
        (b"x" * 5000, "fine-tune", "file_too_large", "above the limit of 4096 bytes"),
    ],
)
async def test_a_bad_file_is_refused_with_its_receipt_and_nothing_is_kept(
    ft: FineTuning, data: bytes, purpose: str, code: str, words: str
) -> None:
    client = await ft.tenant("acme")
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=upload(data), purpose=purpose)  # type: ignore[arg-type]
    error = caught.value.body
    assert error["code"] == code  # type: ignore[index]
    assert words in error["message"]  # type: ignore[index]
    if b"robot" in data:
        assert error["receipt"]["accepted"] == 1  # type: ignore[index]
        assert error["receipt"]["rejected"][0]["line"] == 2  # type: ignore[index]
    assert (await client.files.list()).data == []


async def test_bad_job_requests_get_clear_errors(ft: FineTuning) -> None:
    client = await ft.tenant("acme")
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    cases = [
        ({"model": "no-such-model", "training_file": train.id}, "model_not_available"),
        ({"model": BASE_MODEL, "training_file": "file-nope"}, "file_not_found"),
        (
            {"model": BASE_MODEL, "training_file": train.id, "hyperparameters": {"n_epochs": 0}},
            "invalid_hyperparameter",
        ),
        (
            {"model": BASE_MODEL, "training_file": train.id, "hyperparameters": {"depth": 3}},
            "invalid_hyperparameter",
        ),
        ({"model": BASE_MODEL, "training_file": train.id, "suffix": "a b"}, "invalid_suffix"),
    ]
    for body, code in cases:
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as caught:
            await client.post("/fine_tuning/jobs", cast_to=object, body=body)
        assert caught.value.body["code"] == code, body  # type: ignore[index]
    assert (await client.fine_tuning.jobs.list()).data == []


async def test_a_file_psionic_refuses_fails_the_job_with_the_receipt(ft: FineTuning) -> None:
    """Lines too long for the base model's max_seq_len are found by psionic's tokenizer."""
    client = await ft.tenant("acme")
    long = {"messages": [{"role": "user", "content": "word " * 40}, EXAMPLE["messages"][1]]}
    train = await client.files.create(file=upload(jsonl(EXAMPLE, long)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=train.id,
        extra_body={"psionic_hyperparameters": {"max_seq_len": 16}},
    )
    failed = await ft.ended(job.id)
    assert failed["status"] == "failed" and failed["error"]["param"] == "training_file"
    assert "line 2: 41 tokens, above max_seq_len 16" in failed["error"]["message"]
    receipt = failed["receipts"]["training_file"]
    assert receipt["accepted"] == 1 and receipt["rejected"][0]["line"] == 2


@pytest.mark.parametrize("trainer", [FakeTrainer(eval_loss=lambda step: 1.99)])
async def test_the_gate_refuses_a_checkpoint_that_does_not_beat_the_base(
    ft: FineTuning,
) -> None:
    client = await ft.tenant("acme")
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    holdout = await client.files.create(file=upload(jsonl(HOLDOUT)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=train.id, extra_body={"holdout_file": holdout.id}
    )
    await ft.ended(job.id)
    with pytest.raises(openai.ConflictError) as caught:
        await client.post(f"/fine_tuning/jobs/{job.id}/promote", cast_to=object, body={})
    error = caught.value.body
    assert error["code"] == "promotion_refused"  # type: ignore[index]
    assert "holdout loss 1.9900 does not beat the base's 2.0000 by 2.0%" in error["message"]  # type: ignore[index]
    shown = await ft.daemon.call("finetune.job", {"job_id": job.id})
    assert shown["promotion"]["state"] == "held" and "1.9900" in shown["promotion"]["reason"]
    assert shown["promotions"][-1]["action"] == "refused"
    assert [m.id for m in (await client.models.list()).data] == [BASE_MODEL]
    assert ft.trainer.adapters == {}


@pytest.mark.parametrize(
    "trainer", [FakeTrainer(pass_rate=lambda step: 1.0 if step is None else 0.5)]
)
async def test_the_gate_refuses_a_lower_pass_rate(ft: FineTuning) -> None:
    client = await ft.tenant("acme")
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=train.id, validation_file=train.id
    )
    await ft.ended(job.id)
    with pytest.raises(openai.ConflictError) as caught:
        await client.post(f"/fine_tuning/jobs/{job.id}/promote", cast_to=object, body={"step": 4})
    assert "pass rate 50% is below the base's 100%" in caught.value.body["message"]  # type: ignore[index]


async def test_without_a_holdout_nothing_is_promoted(ft: FineTuning) -> None:
    client = await ft.tenant("acme")
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=train.id)
    await ft.ended(job.id)
    with pytest.raises(openai.ConflictError) as caught:
        await client.post(f"/fine_tuning/jobs/{job.id}/promote", cast_to=object, body={})
    assert "no holdout eval of the base model" in caught.value.body["message"]  # type: ignore[index]


async def test_a_tenant_fetches_its_own_jobs_adapter_as_a_tar(ft: FineTuning) -> None:
    acme = await ft.tenant("acme")
    made = await ft.daemon.call("finetune.tenant.create", {"tenant": "other"})
    train = await acme.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    job = await acme.fine_tuning.jobs.create(model=BASE_MODEL, training_file=train.id)
    await ft.ended(job.id)
    url = f"{await ft.api_url()}/fine_tuning/jobs/{job.id}/adapter"
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {acme.api_key}"}
        async with http.get(url, headers=headers) as resp:  # no holdout: the last checkpoint
            assert resp.status == 200 and resp.content_type == "application/x-tar"
            assert resp.headers["X-Adapter-Step"] == "4"
            with tarfile.open(fileobj=io.BytesIO(await resp.read())) as tar:
                assert "adapter_config.json" in tar.getnames()
        async with http.get(url + "?step=2", headers=headers) as resp:
            assert resp.status == 200 and resp.headers["X-Adapter-Step"] == "2"
        async with http.get(url + "?step=3", headers=headers) as resp:
            assert resp.status == 404  # no checkpoint at step 3
        other = {"Authorization": f"Bearer {made['api_key']}"}
        async with http.get(url, headers=other) as resp:
            assert resp.status == 404  # another tenant's job, as if it did not exist
