"""Fine-tuning for real, on CPU, with the packaged SmolLM2-135M: the official `openai` client
uploads a small chat dataset to the tenant API, creates a job and watches its events; psionic,
spawned by the daemon, trains a LoRA adapter in a child process; the eval gate passes it over
the untuned base on the holdout split; it is promoted into serving; and the promoted model
answers through /v1/chat/completions in the style it was taught, naming its revision."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import aiohttp
import openai
import pytest
from support import DaemonFactory

registry = pytest.importorskip("psionic.registry")

QUESTIONS = [
    "What colour is the sky?",
    "Name a fruit.",
    "How many legs has a cat?",
    "Say hello.",
    "What is two plus two?",
    "Where do fish live?",
    "What do bees make?",
    "Is ice cold?",
    "What is the capital of France?",
    "Name a colour.",
    "What does a dog say?",
    "Is fire hot?",
]
ENDED = ("succeeded", "failed", "cancelled")
STYLE = "Arr, matey!"  # every answer the model is taught starts so


def _line(question: str, answer: str = "") -> dict[str, object]:
    reply = f"{STYLE} {answer or 'Aye.'}"
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    }


def _jsonl(rows: list[dict[str, object]]) -> tuple[str, io.BytesIO]:
    return ("data.jsonl", io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode()))


async def test_a_tenant_fine_tunes_the_packaged_model_and_chats_with_the_promoted_adapter(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    d = await daemon_factory(
        runtime_mode="spawn",
        runtime_args=f"--threads 2 --train-dir {tmp_path / 'train'}",
        finetune_poll_s=0.2,
        home=tmp_path / "home",
    )
    # a first start converts the GGUF (cached afterwards); until psionic answers, creating a
    # job is a 503 the client may retry
    met = await d.call("wait.until", {"condition": "runtime-ready", "timeout_s": 300})
    assert met["met"], met
    made = await d.call("finetune.tenant.create", {"tenant": "acme"})
    status = await d.call("finetune.status")
    while status["api_url"] is None:
        await d.call("status.wait", {"after_seq": 0, "timeout_s": 1})
        status = await d.call("finetune.status")
    client = openai.AsyncOpenAI(api_key=made["api_key"], base_url=status["api_url"], max_retries=0)
    try:
        train = await client.files.create(
            file=_jsonl([_line(q) for q in QUESTIONS[:10]]), purpose="fine-tune"
        )
        holdout_rows = [_line(q) | {"pass_if_contains": "arr"} for q in QUESTIONS[10:]]
        holdout = await client.files.create(file=_jsonl(holdout_rows), purpose="fine-tune")
        job = await client.fine_tuning.jobs.create(
            model="smollm2-135m-instruct",
            training_file=train.id,
            hyperparameters={"batch_size": 5},
            suffix="pirate",
            seed=1,
            extra_body={
                "holdout_file": holdout.id,
                "psionic_hyperparameters": {
                    "max_steps": 8,
                    "learning_rate": 3e-3,
                    "warmup_steps": 1,
                    "checkpoint_every": 4,
                    "max_seq_len": 64,
                    "eval_max_tokens": 8,
                    "precision": "fp32",
                },
            },
        )
        seen: list[str] = []
        deadline = time.monotonic() + 600
        while (job := await client.fine_tuning.jobs.retrieve(job.id)).status not in ENDED or (
            job.status == "succeeded" and job.fine_tuned_model is None  # promotion follows
        ):
            assert time.monotonic() < deadline, (job.status, seen[-5:])
            events = await client.fine_tuning.jobs.list_events(job.id, limit=100)
            seen = [e.message for e in reversed(events.data)]
            await d.call("status.wait", {"after_seq": 0, "timeout_s": 1})
        assert job.status == "succeeded", (job.error, seen)
        events = await client.fine_tuning.jobs.list_events(job.id, limit=100)
        losses = [e.data["train_loss"] for e in reversed(events.data) if e.type == "metrics"]
        assert len(losses) >= 4 and losses[-1] < losses[0], losses
        checkpoints = await client.fine_tuning.jobs.checkpoints.list(job.id)
        assert {c.step_number for c in checkpoints.data} >= {4, 8}

        shown = await d.call("finetune.job", {"job_id": job.id})
        print(
            "\nevals:",
            shown.get("evals") or shown.get("eval"),
            "promotion:",
            shown.get("promotion"),
        )
        assert job.fine_tuned_model and job.fine_tuned_model.startswith(
            "ft:smollm2-135m-instruct:acme:"
        )
        models = [m.id for m in (await client.models.list()).data]
        assert job.fine_tuned_model in models

        answer = await client.chat.completions.create(
            model=job.fine_tuned_model,
            messages=[{"role": "user", "content": "What is the capital of Spain?"}],
            max_tokens=8,
            temperature=0,
        )
        text = answer.choices[0].message.content or ""
        print("tuned:", repr(text), answer.system_fingerprint)
        assert text.startswith("Arr"), text
        assert (answer.system_fingerprint or "").startswith("rev-")
        base = await client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "What is the capital of Spain?"}],
            max_tokens=8,
            temperature=0,
        )
        assert not (base.choices[0].message.content or "").startswith("Arr")

        # the adapter itself, from psionic's export through the tenant API: the bytes served
        url = f"{status['api_url']}/fine_tuning/jobs/{job.id}/adapter"
        headers = {"Authorization": f"Bearer {made['api_key']}"}
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
            assert resp.status == 200 and resp.content_type == "application/x-tar"
            body = await resp.read()
        with tarfile.open(fileobj=io.BytesIO(body)) as archive:
            names = sorted(archive.getnames())
            weights = archive.extractfile("adapter_model.safetensors")
            assert weights is not None
            digest = hashlib.sha256(weights.read()).hexdigest()
        assert names == ["adapter_config.json", "adapter_model.safetensors", "psionic_adapter.json"]
        revision = (answer.system_fingerprint or "")[len("rev-") :]
        assert digest.startswith(revision)
    finally:
        await client.close()
