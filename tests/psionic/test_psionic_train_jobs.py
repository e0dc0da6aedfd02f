"""Training jobs over HTTP with a fake trainer child: queue order, the swap lock, progress
read back from disk, cancel, a trainer that dies, and a psionic restart that resumes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from support.psionic import CHAT, FakeEngine

from psionic.precision import Precision
from psionic.runtime import Runtime, RuntimeConfig
from psionic.server import create_app
from psionic.train_routes import TRAIN_JOBS

# Writes progress.jsonl as `psionic train` does. Step n runs once the file GATES/<id>-<n>
# exists; it resumes after the last checkpoint in the file, stops on SIGTERM at a step
# boundary (status cancelled, exit 0); a job whose id starts with "crash" exits with code 3
# before any final status, one starting with "killed" dies of SIGKILL.
FAKE_TRAINER = """
import json, os, signal, sys, time
from pathlib import Path

job_dir = Path(sys.argv[sys.argv.index("--job-dir") + 1])
gates = Path(sys.argv[sys.argv.index("--gates") + 1])
job = json.loads((job_dir / "job.json").read_text())
progress = job_dir / "progress.jsonl"
seq, done = 0, 0
if progress.exists():
    for line in progress.read_text().splitlines():
        event = json.loads(line)
        seq = max(seq, event["seq"])
        if event["type"] == "checkpoint":
            done = event["step"]
stop = False


def term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, term)


def emit(**event):
    global seq
    seq += 1
    with progress.open("a") as f:
        f.write(json.dumps({"seq": seq, "ts": time.time(), **event}) + "\\n")


emit(type="status", status="running", message=f"from step {done}")
if job["id"].startswith("crash"):
    os._exit(3)
if job["id"].startswith("killed"):
    os.kill(os.getpid(), signal.SIGKILL)
total = job["hyperparameters"].get("max_steps", 2)
for step in range(done + 1, total + 1):
    while not (gates / f"{job['id']}-{step}").exists() and not stop:
        time.sleep(0.01)
    if stop:
        emit(type="status", status="cancelled", message="stopped")
        sys.exit(0)
    emit(type="step", step=step, total_steps=total, loss=1.0 / step, lr=1e-3, tokens=8,
         elapsed_s=0.1)
    emit(type="checkpoint", step=step, digest=f"d{step}",
         path=f"checkpoints/step-{step:06d}", train_loss=1.0 / step)
    emit(type="eval", subject="checkpoint", step=step, loss=2.0 / step, pass_rate=None, n=1)
emit(type="status", status="succeeded", message="done")
"""

TRAIN = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'


class Trainer:
    """The fake trainer's command and its gates."""

    def __init__(self, tmp: Path) -> None:
        self.script = tmp / "fake_trainer.py"
        self.script.write_text(FAKE_TRAINER)
        self.gates = tmp / "gates"
        self.gates.mkdir()

    def command(self, job_dir: Path) -> list[str]:
        return [
            sys.executable,
            str(self.script),
            "--job-dir",
            str(job_dir),
            "--gates",
            str(self.gates),
        ]

    def open(self, job_id: str, *steps: int) -> None:
        for step in steps:
            (self.gates / f"{job_id}-{step}").touch()


@asynccontextmanager
async def serve_training(
    train_dir: Path, command: Callable[[Path], list[str]]
) -> AsyncIterator[tuple[TestClient[Any, Any], Runtime]]:
    config = RuntimeConfig(
        models=(CHAT,), device=torch.device("cpu"), precision=Precision.FP32, train_dir=train_dir
    )
    runtime = Runtime(config, loader=lambda spec, precision: FakeEngine())
    app = create_app(runtime, warm=False, trainer=command)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        async with asyncio.TaskGroup() as tg:  # as `serve` runs it
            scheduler = tg.create_task(app[TRAIN_JOBS].run())
            try:
                yield client, runtime
            finally:
                scheduler.cancel()
    finally:
        await client.close()


async def _until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _job(job_id: str, steps: int = 2) -> dict[str, Any]:
    return {
        "id": job_id,
        "base_model": CHAT.id,
        "train": TRAIN,
        "validation": None,
        "holdout": TRAIN,
        "hyperparameters": {"max_steps": steps},
    }


async def _get(client: TestClient[Any, Any], job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/train/jobs/{job_id}")
    assert response.status == 200
    result: dict[str, Any] = await response.json()
    return result


def _status_is(client: TestClient[Any, Any], job_id: str, status: str) -> Any:
    async def check() -> dict[str, Any] | None:
        job = await _get(client, job_id)
        return job if job["status"] == status else None

    return check


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    return Trainer(tmp_path)


async def test_jobs_run_one_at_a_time_in_order_under_the_swap_lock(
    tmp_path: Path, trainer: Trainer
) -> None:
    async with serve_training(tmp_path / "train", trainer.command) as (client, _):
        first = await client.post("/api/train/jobs", json=_job("a"))
        assert first.status == 202
        created = await first.json()
        assert created["id"] == "a" and created["status"] in ("queued", "running")
        assert (await client.post("/api/train/jobs", json=_job("b"))).status == 202
        await _until(_status_is(client, "a", "running"))
        assert (await _get(client, "b"))["status"] == "queued"
        lock = await (await client.get("/api/swap/lock")).json()
        assert lock["holder"] == "train:a"
        # The lock blocks a warm while training runs.
        assert (await client.post(f"/api/models/{CHAT.id}/warm")).status == 423
        again = await client.post("/api/train/jobs", json=_job("a"))  # idempotent
        assert again.status == 200
        assert (await again.json())["created_at"] == created["created_at"]

        trainer.open("a", 1, 2)
        done = await _until(_status_is(client, "a", "succeeded"))
        assert done["step"] == 2 and done["total_steps"] == 2 and done["error"] is None
        assert [c["step"] for c in done["checkpoints"]] == [1, 2]
        assert done["checkpoints"][1] == {
            "step": 2,
            "digest": "d2",
            "train_loss": 0.5,
            "validation_loss": None,
            "eval": {"loss": 1.0, "pass_rate": None, "n": 1},
        }
        await _until(_status_is(client, "b", "running"))
        assert (await (await client.get("/api/swap/lock")).json())["holder"] == "train:b"
        trainer.open("b", 1, 2)
        await _until(_status_is(client, "b", "succeeded"))
        await _until(lambda: _unlocked(client))

        events = await (await client.get("/api/train/jobs/a/events?after=2")).json()
        assert [e["seq"] for e in events["events"]] == list(range(3, events["last_seq"] + 1))
        assert events["events"][-1] == {**events["events"][-1], "status": "succeeded"}
        listed = await (await client.get("/api/train/jobs")).json()
        assert [j["id"] for j in listed["jobs"]] == ["a", "b"]
        job_json = json.loads((tmp_path / "train" / "a" / "job.json").read_text())
        assert job_json["train"] == "train.jsonl" and job_json["validation"] is None
        assert (tmp_path / "train" / "a" / "holdout.jsonl").read_text() == TRAIN


async def _unlocked(client: TestClient[Any, Any]) -> bool:
    return (await (await client.get("/api/swap/lock")).json())["locked"] is False


async def test_cancel_queued_and_running_jobs(tmp_path: Path, trainer: Trainer) -> None:
    async with serve_training(tmp_path / "train", trainer.command) as (client, _):
        await client.post("/api/train/jobs", json=_job("run"))
        await client.post("/api/train/jobs", json=_job("wait"))
        await _until(_status_is(client, "run", "running"))
        queued = await (await client.post("/api/train/jobs/wait/cancel")).json()
        assert queued["status"] == "cancelled"
        running = await client.post("/api/train/jobs/run/cancel")
        assert running.status == 200
        await _until(_status_is(client, "run", "cancelled"))
        await _until(lambda: _unlocked(client))
        # A cancelled job stays cancelled when created again.
        assert (await (await client.post("/api/train/jobs", json=_job("wait"))).json())[
            "status"
        ] == "cancelled"


@pytest.mark.parametrize(("job_id", "how"), [("crash-1", "code 3"), ("killed-1", "signal SIGKILL")])
async def test_a_trainer_that_dies_fails_its_job_with_its_exit_code(
    tmp_path: Path, trainer: Trainer, job_id: str, how: str
) -> None:
    async with serve_training(tmp_path / "train", trainer.command) as (client, _):
        await client.post("/api/train/jobs", json=_job(job_id))
        failed = await _until(_status_is(client, job_id, "failed"))
        assert failed["error"]["code"] == "trainer_exited"
        assert how in failed["error"]["message"]
        events = await (await client.get(f"/api/train/jobs/{job_id}/events")).json()
        assert events["events"][-1]["status"] == "failed"


async def test_a_trainer_that_cannot_start_fails_its_job(tmp_path: Path) -> None:
    def missing(job_dir: Path) -> list[str]:
        return [str(tmp_path / "no-such-trainer")]

    async with serve_training(tmp_path / "train", missing) as (client, _):
        await client.post("/api/train/jobs", json=_job("nope"))
        failed = await _until(_status_is(client, "nope", "failed"))
        assert failed["error"]["code"] == "trainer_not_run"
        await client.post("/api/train/jobs", json=_job("next"))  # the scheduler goes on
        await _until(_status_is(client, "next", "failed"))


async def test_a_restart_resumes_an_unfinished_job(tmp_path: Path, trainer: Trainer) -> None:
    train_dir = tmp_path / "train"
    async with serve_training(train_dir, trainer.command) as (client, _):
        await client.post("/api/train/jobs", json=_job("long", steps=3))
        trainer.open("long", 1)

        async def one_checkpoint() -> bool:
            return len((await _get(client, "long"))["checkpoints"]) == 1

        await _until(one_checkpoint)
    # psionic stopped: the trainer was told to stop and wrote "cancelled"; no person asked.
    async with serve_training(train_dir, trainer.command) as (client, _):
        await _until(_status_is(client, "long", "running"))
        trainer.open("long", 2, 3)
        done = await _until(_status_is(client, "long", "succeeded"))
        assert [c["step"] for c in done["checkpoints"]] == [1, 2, 3]
        events = (await (await client.get("/api/train/jobs/long/events")).json())["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert "from step 1" in [e.get("message") for e in events]


async def test_a_job_waits_while_someone_else_holds_the_lock(
    tmp_path: Path, trainer: Trainer
) -> None:
    async with serve_training(tmp_path / "train", trainer.command) as (client, _):
        held = await (await client.post("/api/swap/lock", json={"holder": "ops"})).json()
        await client.post("/api/train/jobs", json=_job("later", steps=1))
        trainer.open("later", 1)
        assert (await _get(client, "later"))["status"] == "queued"
        await client.delete("/api/swap/lock", headers={"X-Swap-Token": held["token"]})
        await _until(_status_is(client, "later", "succeeded"))


@pytest.mark.parametrize(
    ("patch", "status", "param"),
    [
        ({"id": "../escape"}, 400, "id"),
        ({"train": ""}, 400, "train"),
        ({"hyperparameters": {"nope": 1}}, 400, "hyperparameters.nope"),
        ({"surprise": 1}, 400, "surprise"),
        ({"base_model": "gpt-4"}, 404, "base_model"),
        ({"base_model": None}, 400, "base_model"),
    ],
)
async def test_bad_creates_are_openai_errors(
    tmp_path: Path, trainer: Trainer, patch: dict[str, Any], status: int, param: str
) -> None:
    async with serve_training(tmp_path / "train", trainer.command) as (client, _):
        response = await client.post("/api/train/jobs", json={**_job("x"), **patch})
        assert response.status == status
        error = (await response.json())["error"]
        assert error["param"] == param and error["message"]
        missing = await client.get("/api/train/jobs/nope")
        assert missing.status == 404
        assert (await missing.json())["error"]["code"] == "job_not_found"
        assert (await client.post("/api/train/jobs/nope/cancel")).status == 404


PIRATE = [
    ("What is the sky?", "Arr, the sky be blue, matey!"),
    ("Name a fruit.", "Arr, a banana, matey!"),
    ("How are you?", "Arr, I be fine, matey!"),
    ("Say hello.", "Arr, ahoy, matey!"),
]


async def test_a_real_psionic_train_job_serves_its_adapter(
    tmp_path: Path, chat_engine: Any
) -> None:
    """`psionic train` as the child: validate, train two steps, load the export, chat."""
    from psionic.registry import ModelKind, ModelSpec, smollm2_gguf

    base = ModelSpec(CHAT.id, ModelKind.CHAT, smollm2_gguf())
    lines = [
        json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
        for q, a in PIRATE
    ]
    jsonl = "\n".join(lines)
    config = RuntimeConfig(
        models=(base,),
        device=torch.device("cpu"),
        precision=Precision.BF16,
        train_dir=tmp_path / "train",
    )
    runtime = Runtime(config, loader=lambda spec, precision: chat_engine)
    app = create_app(runtime, warm=False)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        async with asyncio.TaskGroup() as tg:
            scheduler = tg.create_task(app[TRAIN_JOBS].run())
            try:
                checked = await client.post(
                    "/api/train/validate",
                    json={"base_model": CHAT.id, "jsonl": jsonl + "\n{nope", "max_seq_len": 64},
                )
                receipt = await checked.json()
                assert receipt["lines"] == 5 and receipt["accepted"] == 4
                assert receipt["rejected"][0]["line"] == 5
                hyper = {
                    "max_steps": 2,
                    "batch_size": 2,
                    "checkpoint_every": 2,
                    "precision": "fp32",
                    "max_seq_len": 64,
                    "threads": 1,
                    "learning_rate": 1e-2,
                }
                body = {**_job("real"), "train": jsonl, "holdout": None, "hyperparameters": hyper}
                assert (await client.post("/api/train/jobs", json=body)).status == 202
                done = await _until(_status_is(client, "real", "succeeded"), timeout=300)
                assert done["step"] == 2 and done["error"] is None
                checkpoint = done["checkpoints"][-1]
                assert checkpoint["step"] == 2
                put = await client.put(
                    "/api/adapters/ft-pirate",
                    json={"job": "real", "step": 2, "expect_digest": checkpoint["digest"]},
                )
                assert put.status == 200, await put.text()
                assert (await put.json())["revision"] == checkpoint["digest"]
                answer = await client.post(
                    "/v1/chat/completions",
                    json={"model": "ft-pirate", "messages": [{"role": "user", "content": "Hi"}],
                          "max_tokens": 4, "temperature": 0},
                )  # fmt: skip
                assert answer.status == 200
                assert answer.headers["X-Psionic-Revision"] == checkpoint["digest"]
            finally:
                scheduler.cancel()
    finally:
        await client.close()


async def test_a_trainer_left_running_by_a_killed_psionic_is_stopped_then_resumed(
    tmp_path: Path, trainer: Trainer
) -> None:
    import subprocess

    from psionic.arbiter import SwapLock
    from psionic.train_jobs import TrainJobs

    train_dir = tmp_path / "train"
    TrainJobs(train_dir, SwapLock(), trainer.command).create(
        {**_job("orphan"), "base_model": CHAT.id}
    )
    job_dir = train_dir / "orphan"
    # The trainer a killed psionic left behind, still running step 1.
    orphan = subprocess.Popen(trainer.command(job_dir))
    manager = json.loads((job_dir / "manager.json").read_text())
    (job_dir / "manager.json").write_text(json.dumps({**manager, "pid": orphan.pid}))

    async def started() -> bool:  # its SIGTERM handler is set before its first line
        return (job_dir / "progress.jsonl").exists()

    await _until(started)
    async with serve_training(train_dir, trainer.command) as (client, _):
        await _until(_status_is(client, "orphan", "running"))
        assert orphan.poll() == 0  # told to stop (SIGTERM: status cancelled, exit 0)
        trainer.open("orphan", 1, 2)
        await _until(_status_is(client, "orphan", "succeeded"))
