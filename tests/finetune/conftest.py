"""Fixtures of the fine-tuning tests: a daemon in-process whose trainer is the fake (psionic's
training API in memory), a tenant's key, and the official `openai` client on the tenant API."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from support import DaemonFactory, InProcessDaemon

from autopilotd.adapters.fake_trainer import BASE_MODEL, FakeTrainer
from autopilotd.app import Adapters

EXAMPLE = {
    "messages": [
        {"role": "user", "content": "What colour is the sky?"},
        {"role": "assistant", "content": "Blue."},
    ]
}
HOLDOUT = EXAMPLE | {"pass_if_contains": "blue"}


def jsonl(*examples: Any) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in examples).encode()


def upload(data: bytes, name: str = "train.jsonl") -> tuple[str, io.BytesIO]:
    return (name, io.BytesIO(data))


@dataclass
class FineTuning:
    daemon: InProcessDaemon
    trainer: FakeTrainer
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    async def api_url(self) -> str:
        status = await self.daemon.call("finetune.status")
        while status["api_url"] is None:
            await self.daemon.call("status.wait", {"after_seq": 0, "timeout_s": 1})
            status = await self.daemon.call("finetune.status")
        return str(status["api_url"])

    async def tenant(self, name: str, **quotas: int) -> openai.AsyncOpenAI:
        made = await self.daemon.call("finetune.tenant.create", {"tenant": name, **quotas})
        return await self.client(made["api_key"])

    async def client(self, key: str) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(api_key=key, base_url=await self.api_url(), max_retries=0)
        self.clients.append(client)
        return client

    async def wait_job(
        self, job_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 20
    ) -> dict[str, Any]:
        """The job (as finetune.job shows it) once `done` holds, waiting on the snapshot."""
        seq = 0
        for _ in range(int(timeout_s * 20)):
            job: dict[str, Any] = await self.daemon.call("finetune.job", {"job_id": job_id})
            if done(job):
                return job
            status = await self.daemon.call("status.wait", {"after_seq": seq, "timeout_s": 1})
            seq = status["seq"]
        raise AssertionError(f"job {job_id} did not get there: {job['status']}")

    async def ended(self, job_id: str) -> dict[str, Any]:
        return await self.wait_job(
            job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled")
        )


@pytest.fixture
def trainer() -> FakeTrainer:
    return FakeTrainer()


@pytest.fixture
async def ft(
    daemon_factory: DaemonFactory, trainer: FakeTrainer, tmp_path: Path
) -> AsyncIterator[FineTuning]:
    d = await daemon_factory(
        adapters=Adapters(trainer=trainer),
        finetune_poll_s=0.05,
        finetune_auto_promote=False,
        finetune_file_max_bytes=4096,
        home=tmp_path / "ft",
    )
    made = FineTuning(d, trainer)
    yield made
    for client in made.clients:
        await client.close()


__all__ = ["BASE_MODEL", "EXAMPLE", "HOLDOUT", "FineTuning", "jsonl", "upload"]
