"""The trainer port over psionic's HTTP API for training jobs and adapters (/api/train/*,
/api/adapters/*), at the address the local runtime has now (it may change when the daemon
respawns psionic on another port)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from autopilotd.adapters.http_session import LazySession
from autopilotd.ports.finetune import (
    AdapterRevision,
    AdapterSource,
    EvalResult,
    Receipt,
    TrainCheckpoint,
    TrainerError,
    TrainEvent,
    TrainJob,
    TrainSpec,
)

TAR = "application/x-tar"


class PsionicTrainer:
    """`url()` is psionic's base URL now, or None while no local runtime runs."""

    def __init__(self, url: Callable[[], str | None], *, timeout_s: float = 120.0) -> None:
        self._url = url
        self._client = LazySession(timeout_s)

    async def close(self) -> None:
        await self._client.close()

    @contextlib.asynccontextmanager
    async def _exchange(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request to psionic, answered 2xx; every way it can fail is a TrainerError,
        including an answer the caller cannot read."""
        base = self._url()
        if not base:
            raise TrainerError("the local runtime (psionic) is not running: set runtime_mode")
        try:
            async with self._client().request(method, base.rstrip("/") + path, json=body) as resp:
                if resp.status >= 400:
                    raise _refusal(resp.status, await resp.json(content_type=None))
                yield resp
        except aiohttp.ClientError as exc:
            raise TrainerError(f"psionic is not reachable ({type(exc).__name__})") from None
        except TimeoutError:
            raise TrainerError("psionic did not answer in time") from None
        except ValueError:
            raise TrainerError("psionic sent an answer that is not JSON") from None

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self._exchange(method, path, body) as resp:
            return await resp.json(content_type=None)

    async def validate(self, base_model: str, jsonl: str, max_seq_len: int) -> Receipt:
        data = await self._request(
            "POST",
            "/api/train/validate",
            {"base_model": base_model, "jsonl": jsonl, "max_seq_len": max_seq_len},
        )
        try:
            return Receipt.from_json(data)
        except (KeyError, TypeError, ValueError):
            raise TrainerError("psionic sent a malformed receipt") from None

    async def create_job(self, spec: TrainSpec) -> TrainJob:
        body = {
            "id": spec.id,
            "base_model": spec.base_model,
            "train": spec.train,
            "validation": spec.validation,
            "holdout": spec.holdout,
            "hyperparameters": spec.hyperparameters,
        }
        return _job(await self._request("POST", "/api/train/jobs", body))

    async def get_job(self, job_id: str) -> TrainJob:
        return _job(await self._request("GET", f"/api/train/jobs/{quote(job_id, safe='')}"))

    async def events(self, job_id: str, after: int) -> list[TrainEvent]:
        data = await self._request(
            "GET", f"/api/train/jobs/{quote(job_id, safe='')}/events?after={int(after)}"
        )
        try:
            return [
                TrainEvent(
                    seq=int(e["seq"]),
                    type=str(e["type"]),
                    data={k: v for k, v in e.items() if k not in ("seq", "type")},
                )
                for e in data["events"]
            ]
        except (KeyError, TypeError, ValueError):
            raise TrainerError("psionic sent malformed events") from None

    async def cancel(self, job_id: str) -> TrainJob:
        return _job(await self._request("POST", f"/api/train/jobs/{quote(job_id, safe='')}/cancel"))

    async def put_adapter(
        self,
        model_id: str,
        job: str,
        step: int,
        expect_digest: str | None,
        previous: AdapterSource | None = None,
    ) -> AdapterRevision:
        body: dict[str, Any] = {"job": job, "step": step, "expect_digest": expect_digest}
        if previous is not None:
            body["previous"] = {
                "job": previous.job,
                "step": previous.step,
                "expect_digest": previous.digest,
            }
        return _adapter(
            await self._request("PUT", f"/api/adapters/{quote(model_id, safe='')}", body)
        )

    async def rollback_adapter(self, model_id: str) -> AdapterRevision:
        return _adapter(
            await self._request("POST", f"/api/adapters/{quote(model_id, safe='')}/rollback")
        )

    async def adapter_archive(self, job_id: str, step: int) -> bytes:
        path = f"/api/train/jobs/{quote(job_id, safe='')}/exports/{int(step)}"
        async with self._exchange("GET", path) as resp:
            if resp.content_type != TAR:
                raise TrainerError(f"psionic sent {resp.content_type}, not {TAR}")
            return await resp.read()

    async def delete_adapter(self, model_id: str) -> None:
        await self._request("DELETE", f"/api/adapters/{quote(model_id, safe='')}")

    async def list_adapters(self) -> list[AdapterRevision]:
        data = await self._request("GET", "/api/adapters")
        return [_adapter(a) for a in data.get("adapters", [])]

    async def base_models(self) -> list[str]:
        data = await self._request("GET", "/v1/models")
        return [
            str(m["id"])
            for m in data.get("data", [])
            if isinstance(m, dict) and not m.get("parent") and m.get("kind", "chat") == "chat"
        ]

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = await self._request("POST", "/v1/chat/completions", body)
        return answer

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async with self._exchange("POST", "/v1/chat/completions", body) as resp:
            async for chunk in resp.content.iter_any():
                yield chunk


def _eval(data: Any) -> EvalResult | None:
    if not isinstance(data, dict) or data.get("loss") is None:
        return None
    rate = data.get("pass_rate")
    return EvalResult(
        float(data["loss"]), None if rate is None else float(rate), int(data.get("n", 0))
    )


def _job(data: Any) -> TrainJob:
    try:
        return TrainJob(
            id=str(data["id"]),
            status=str(data["status"]),
            step=int(data.get("step") or 0),
            total_steps=data.get("total_steps"),
            error=data.get("error"),
            base_eval=_eval(data.get("base_eval")),
            checkpoints=tuple(
                TrainCheckpoint(
                    step=int(c["step"]),
                    digest=str(c.get("digest") or ""),
                    train_loss=c.get("train_loss"),
                    eval=_eval(c.get("eval")),
                )
                for c in data.get("checkpoints") or []
            ),
        )
    except (KeyError, TypeError, ValueError):
        raise TrainerError("psionic sent a malformed training job") from None


def _adapter(data: Any) -> AdapterRevision:
    try:
        return AdapterRevision(
            id=str(data["id"]),
            base=str(data["base"]),
            revision=str(data["revision"]),
            previous=data.get("previous"),
            step=data.get("step"),
            job=data.get("job"),
        )
    except (KeyError, TypeError, ValueError):
        raise TrainerError("psionic sent a malformed adapter") from None


def _refusal(status: int, data: Any) -> TrainerError:
    """psionic's error answer (OpenAI's shape, or anything else) as a TrainerError."""
    error = data.get("error", {}) if isinstance(data, dict) else {}
    error = error if isinstance(error, dict) else {"message": str(error)}
    return TrainerError(
        str(error.get("message") or f"psionic answered {status}"),
        status=status,
        code=error.get("code"),
    )
