"""The owner's finetune.* commands over JSON-RPC, the events they publish, the snapshot's
`finetune` section, and the service method a NIP-90 handler would call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory

from autopilotd.adapters.fake_trainer import FakeTrainer
from autopilotd.app import Adapters
from autopilotd.client import RpcError
from autopilotd.config import Config
from autopilotd.ctl.main import run as ctl_run
from autopilotd.errors import AuthFailed
from autopilotd.finetune.service import FinetuneService
from autopilotd.finetune.tenancy import NETWORK_TENANT
from autopilotd.paths import Paths
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import DaemonSection
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import StateStore
from autopilotd.store import Store
from autopilotd.store.finetune import FineTuning as Records

from .conftest import BASE_MODEL, EXAMPLE, HOLDOUT, FineTuning, jsonl, upload


async def test_tenants_quotas_and_the_status(ft: FineTuning) -> None:
    made = await ft.daemon.call("finetune.tenant.create", {"tenant": "acme", "jobs": 5})
    assert made["api_key"].startswith("sk-ft-") and made["quotas"]["jobs"] == 5
    assert made["quotas"]["active_jobs"] == 1  # the setting's default
    with pytest.raises(RpcError, match="exists already"):
        await ft.daemon.call("finetune.tenant.create", {"tenant": "acme"})
    with pytest.raises(RpcError, match="a tenant id is"):
        await ft.daemon.call("finetune.tenant.create", {"tenant": "Not OK"})
    changed = await ft.daemon.call("finetune.quota.set", {"tenant": "acme", "active_jobs": 2})
    assert changed["quotas"]["active_jobs"] == 2 and changed["quotas"]["jobs"] == 5
    listed = (await ft.daemon.call("finetune.tenant.list"))["tenants"]
    assert listed[0]["key"] == made["api_key"][:9] + "…"  # never the key itself
    assert made["api_key"] not in str(listed)
    assert listed[0]["usage"] == {
        "active_jobs": 0,
        "jobs": 0,
        "training_tokens": 0,
        "storage_bytes": 0,
    }
    status = await ft.daemon.call("finetune.status")
    assert status["tenants"] == 1 and status["api_url"].startswith("http://127.0.0.1:")
    assert status["state"] == "ready"
    with pytest.raises(RpcError, match="no tenant 'nobody'"):
        await ft.daemon.call("finetune.tenant.revoke", {"tenant": "nobody"})


async def test_jobs_job_cancel_promote_and_their_events(ft: FineTuning) -> None:
    client = await ft.tenant("acme")
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    holdout = await client.files.create(file=upload(jsonl(HOLDOUT)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=train.id, extra_body={"holdout_file": holdout.id}
    )
    shown = await ft.ended(job.id)
    assert [c["gate"]["promotable"] for c in shown["checkpoints"]] == [True, True]
    assert shown["eval"]["base"] == {"loss": 2.0, "pass_rate": None, "n": 2}
    listed = await ft.daemon.call("finetune.jobs", {"tenant": "acme"})
    assert [j["id"] for j in listed["jobs"]] == [job.id]
    assert (await ft.daemon.call("finetune.jobs", {"tenant": "other"}))["jobs"] == []
    with pytest.raises(RpcError, match="has already succeeded"):
        await ft.daemon.call("finetune.cancel", {"job_id": job.id})
    with pytest.raises(RpcError, match="no checkpoint at step 3"):
        await ft.daemon.call("finetune.promote", {"job_id": job.id, "step": 3})

    model = await ft.daemon.call("finetune.promote", {"job_id": job.id})
    assert model["step"] == 4 and model["evidence"]["chosen"]["promotable"]
    assert model["id"] == f"ft:{BASE_MODEL}:acme:{job.id.removeprefix('ftjob-')[:8]}"
    with pytest.raises(RpcError, match="no previous revision"):
        await ft.daemon.call("finetune.rollback", {"model": model["id"]})
    status = await ft.daemon.call("finetune.status")
    assert status["models"][0]["id"] == model["id"] and status["counts"] == {"succeeded": 1}

    events = await ft.daemon.call("events.wait", {"after": 0, "timeout_s": 0, "limit": 1000})
    names = [e["name"] for e in events["events"] if e["name"].startswith("finetune.")]
    for name in ("finetune.tenant_created", "finetune.file_uploaded", "finetune.job_state"):
        assert name in names
    assert names.count("finetune.checkpoint") == 2 and names[-1] == "finetune.promoted"
    states = [e["fields"]["status"] for e in events["events"] if e["name"] == "finetune.job_state"]
    assert states == ["validating_files", "queued", "running", "succeeded"]


async def test_a_job_that_succeeds_promotes_its_best_checkpoint_by_itself(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With finetune_auto_promote (the default) the OpenAI flow ends with a usable model."""
    trainer = FakeTrainer(eval_loss=lambda step: {2: 1.5, 4: 1.7}[step])
    d = await daemon_factory(
        adapters=Adapters(trainer=trainer),
        finetune_poll_s=0.05,
        home=tmp_path / "auto",
    )
    ft = FineTuning(d, trainer)
    client = await ft.tenant("acme")
    train = await client.files.create(file=upload(jsonl(EXAMPLE)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=train.id, validation_file=train.id, suffix="auto"
    )
    done = await ft.wait_job(job.id, lambda j: j["fine_tuned_model"] is not None)
    assert done["fine_tuned_model"] == "ft:fake-chat:acme:auto"
    assert done["promotion"]["step"] == 2  # the lower holdout loss

    trainer.swap_locked = True  # psionic trains another job: it cannot swap models now
    again = await client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=train.id, validation_file=train.id, suffix="auto"
    )
    waiting = await ft.wait_job(
        again.id, lambda j: "swap lock" in ((j["promotion"] or {}).get("reason") or "")
    )
    assert waiting["status"] == "succeeded" and waiting["promotion"]["state"] == "waiting"
    trainer.swap_locked = False
    promoted = await ft.wait_job(again.id, lambda j: j["promotion"]["state"] == "promoted")
    assert promoted["fine_tuned_model"] == "ft:fake-chat:acme:auto"  # a new revision of it
    assert len(trainer.adapters["ft:fake-chat:acme:auto"]) == 2
    await client.close()


async def test_a_job_from_inline_data_for_the_network_tenant(tmp_path: Path) -> None:
    """The service methods the NIP-90 work calls (finetune/nip90.py): inline JSONL kept for
    its buyer, no key, the network's own tenant (made on first use, never counted among the
    owner's tenants); not promoted by itself, but the owner may promote it."""
    store = await Store.open(tmp_path / "db.sqlite")
    state, service = _service(tmp_path, Records(store), poll_s=0.05)
    buyer = "ab" * 32
    job = await service.create_network_job(
        request_id="cd" * 32,
        buyer_pubkey=buyer,
        model=BASE_MODEL,
        training_file=await service.network_dataset(buyer, "train", jsonl(EXAMPLE)),
        holdout_file=await service.network_dataset(buyer, "holdout", jsonl(HOLDOUT)),
        suffix="nip90",
    )
    assert job.tenant_id == NETWORK_TENANT and job.holdout_file is not None
    with pytest.raises(AuthFailed):
        await service.tenancy.authenticate("")
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(service.run(lambda: None))
        async for snapshot in state.changes():
            jobs = snapshot.finetune.jobs
            if jobs and jobs[0]["status"] == "succeeded":
                break
        running.cancel()
    assert state.current.finetune.tenants == 0
    model = await service.promote(None, job.id, None)
    assert model.id == "ft:fake-chat:network:nip90"
    await store.close()


async def test_autopilotctl_makes_a_tenant_and_lists_it(
    ft: FineTuning, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same commands from the CLI (generated from the registry, like MCP's tools)."""
    endpoint = ft.daemon.endpoint
    where = ["--rpc-url", endpoint.rpc_url, "--token", endpoint.token, "--json"]

    async def ctl(*argv: str) -> Any:
        assert await ctl_run([*where, *argv]) == 0
        return json.loads(capsys.readouterr().out)

    made = await ctl("finetune", "tenant", "create", "--tenant", "acme", "--jobs", "3")
    assert made["api_key"].startswith("sk-ft-") and made["quotas"]["jobs"] == 3
    listed = await ctl("finetune", "tenant", "list")
    assert [t["id"] for t in listed["tenants"]] == ["acme"]
    assert (await ctl("finetune", "status"))["tenants"] == 1


async def test_an_idle_follow_loop_leaves_the_snapshot_unread(tmp_path: Path) -> None:
    """With no job to move and nothing new wrong, a pass of the follow loop asks only whether
    a job waits: it does not read the tenants, counts, jobs and models again for a snapshot
    that cannot have changed."""
    store = await Store.open(tmp_path / "db.sqlite")
    passes = asyncio.Event()
    counted = {"passes": 0, "shows": 0}

    class Counting(Records):
        async def active_jobs(self) -> Any:
            counted["passes"] += 1
            if counted["passes"] >= 8:
                passes.set()
            return await super().active_jobs()

        async def jobs(self, *args: Any, **kwargs: Any) -> Any:
            counted["shows"] += 1
            return await super().jobs(*args, **kwargs)

    state, service = _service(tmp_path, Counting(store), poll_s=0.01)
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(service.run(lambda: None))
        await passes.wait()
        running.cancel()
    assert state.current.finetune.state == "ready"
    assert counted["shows"] == 2  # the start's, and the first pass's (it leaves "starting")
    await store.close()


def _service(tmp_path: Path, records: Records, poll_s: float) -> tuple[StateStore, FinetuneService]:
    """A fine-tuning service on its own, with the fake trainer, and the snapshot it writes."""
    state = StateStore(
        Snapshot(
            seq=0,
            daemon=DaemonSection(version="t", pid=1, started_at=0.0, home="h", session_id="s"),
        )
    )
    service = FinetuneService(
        trainer=FakeTrainer(),
        records=records,
        writer=state.writer("finetune"),
        events=EventBus(),
        config=LiveConfig(Config(paths=Paths.for_home(tmp_path), finetune_poll_s=poll_s)),
    )
    return state, service
