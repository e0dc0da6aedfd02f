"""A daemon that stops while a job runs picks it up again at its next start: the events that
came meanwhile are recorded, none twice, and psionic is not asked for the job again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
from support import DaemonFactory

from autopilotd.adapters.fake_trainer import FakeTrainer
from autopilotd.app import Adapters

from .conftest import BASE_MODEL, EXAMPLE, HOLDOUT, FineTuning, jsonl, upload


async def test_a_running_job_is_followed_again_after_a_restart(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    trainer = FakeTrainer(autoplay=False)
    settings = {"finetune_poll_s": 0.05, "home": tmp_path / "home"}
    first = FineTuning(
        await daemon_factory(adapters=Adapters(trainer=trainer), **settings), trainer
    )
    made = await first.daemon.call("finetune.tenant.create", {"tenant": "acme"})
    client = await first.client(made["api_key"])
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=train.id)
    await client.close()
    await first.wait_job(job.id, lambda j: j["status"] == "queued")
    trainer.release(job.id, 3)  # running, step 1, step 2
    await first.wait_job(job.id, lambda j: j["status"] == "running" and j["step"] == 2)
    await first.daemon.stop()

    trainer.release(job.id, 2)  # the checkpoint at step 2, step 3: while the daemon is down
    second = FineTuning(
        await daemon_factory(adapters=Adapters(trainer=trainer), **settings), trainer
    )
    await second.wait_job(job.id, lambda j: j["step"] == 3 and len(j["checkpoints"]) == 1)
    trainer.release(job.id)
    done = await second.ended(job.id)

    assert done["status"] == "succeeded"
    assert trainer.created == [job.id]  # submitted once, never again after the restart
    script = trainer.jobs[job.id].script
    recorded = [e for e in done["events"] if e["data"].get("status") or e["type"] == "metrics"]
    steps = [e["data"]["step"] for e in done["events"] if e["type"] == "metrics"]
    assert steps == [1, 2, 3, 4]
    assert len([e for e in done["events"] if e["message"].startswith("Checkpoint")]) == 2
    assert len(recorded) == len([e for e in script if e.type in ("status", "step")])
    assert [c["step_number"] for c in done["checkpoints"]] == [2, 4]

    client = await second.client(made["api_key"])
    listed = await client.fine_tuning.jobs.list_events(job.id, limit=100)
    ids = [e.id for e in listed.data]
    assert len(ids) == len(set(ids)) == len(done["events"])
    await client.close()


async def test_promoted_models_are_served_again_after_psionic_restarts(ft: FineTuning) -> None:
    """psionic keeps adapters in memory only: after it restarts, the daemon loads each promoted
    model again at its recorded revision (from its job's export, the digest checked)."""
    client, job = await _succeeded_job(ft)
    model = await ft.daemon.call("finetune.promote", {"job_id": job.id, "step": 2})
    ft.trainer.adapters.clear()  # psionic restarted: it serves no adapter
    await ft.wait_job(job.id, lambda j: model["id"] in ft.trainer.adapters)
    [served] = await ft.trainer.list_adapters()
    assert (served.revision, served.step) == (model["revision"], 2)
    answer = await client.chat.completions.create(
        model=model["id"], messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.system_fingerprint == f"rev-{model['revision'][:12]}"
    events = await ft.daemon.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    assert [e["fields"]["model"] for e in events["events"] if e["name"] == "finetune.reserved"] == [
        model["id"]
    ]


async def test_a_rollback_after_psionic_restarts_goes_back_to_the_previous_revision(
    ft: FineTuning,
) -> None:
    """Serving a promoted model again after psionic restarts loads the revision it replaced
    beside it (psionic is told which, and never serves it meanwhile), so a rollback still has
    where to go."""
    client, job = await _succeeded_job(ft)
    first = await ft.daemon.call("finetune.promote", {"job_id": job.id, "step": 2})
    second = await ft.daemon.call("finetune.promote", {"job_id": job.id, "step": 4})
    assert second["previous"] == first["revision"]
    ft.trainer.adapters.clear()  # psionic restarted: it serves no adapter
    both = [first["revision"], second["revision"]]
    await ft.wait_job(
        job.id, lambda j: [a.revision for a in ft.trainer.adapters.get(second["id"], [])] == both
    )
    back = await ft.daemon.call("finetune.rollback", {"model": second["id"]})
    assert (back["revision"], back["step"]) == (first["revision"], 2)
    await client.close()


async def _succeeded_job(ft: FineTuning) -> tuple[openai.AsyncOpenAI, Any]:
    """A tenant's client, and its job (with a holdout) trained to its end."""
    made = await ft.daemon.call("finetune.tenant.create", {"tenant": "acme"})
    client = await ft.client(made["api_key"])
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    holdout = await client.files.create(file=upload(jsonl(HOLDOUT)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=train.id, extra_body={"holdout_file": holdout.id}
    )
    assert (await ft.ended(job.id))["status"] == "succeeded"
    return client, job
