"""A tenant's models on the tenant API (docs/finetune.md): the base models psionic serves
and the tenant's own promoted ones, and chat completions on them, streamed or not. Another
tenant's model is not found, never served."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from autopilotd.errors import AutopilotError, NotFound, NotReady, UserError
from autopilotd.ports.finetune import Trainer, TrainerError
from autopilotd.store.finetune import FineTuning
from autopilotd.store.finetune_records import FtModel, Tenant


class TenantModels:
    def __init__(self, trainer: Trainer, records: FineTuning) -> None:
        self._trainer = trainer
        self._records = records

    async def models(self, tenant: Tenant) -> tuple[list[str], list[FtModel]]:
        """The base models (that psionic serves) and the tenant's own promoted models."""
        try:
            bases = await self._trainer.base_models()
        except TrainerError as exc:
            raise NotReady(f"the trainer (psionic) did not answer: {exc.message}") from None
        return bases, await self._records.models(tenant.id)

    async def chat(self, tenant: Tenant, body: dict[str, Any]) -> dict[str, Any]:
        """A chat completion for a base model or one of the tenant's own models, by psionic."""
        await self._may_chat(tenant, body)
        try:
            return await self._trainer.chat(body)
        except TrainerError as exc:
            raise _chat_error(exc) from None

    async def stream_chat(
        self, tenant: Tenant, body: dict[str, Any]
    ) -> AsyncGenerator[bytes, None]:
        """The same, streamed: psionic's server-sent events as they come. Whatever fails
        before the first event is raised; a failure later ends the stream."""
        await self._may_chat(tenant, body)
        chunks = aiter(self._trainer.stream_chat(body))
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        except TrainerError as exc:
            raise _chat_error(exc) from None
        return _chain(first, chunks)

    async def _may_chat(self, tenant: Tenant, body: dict[str, Any]) -> None:
        model = body.get("model")
        if not isinstance(model, str):
            raise UserError("model is required", data={"code": "invalid_request", "param": "model"})
        bases, own = await self.models(tenant)
        if model not in bases and model not in {m.id for m in own}:
            raise NotFound(
                f"The model {model!r} does not exist or you do not have access to it.",
                data={"code": "model_not_found", "param": "model"},
            )


def _chat_error(exc: TrainerError) -> AutopilotError:
    if exc.unreachable:
        return NotReady(f"the model server did not answer: {exc.message}")
    return UserError(exc.message, data={"code": exc.code or "invalid_request", "param": None})


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """`first`, then the rest of psionic's stream (closed with this one, early or not)."""
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    except TrainerError as exc:
        raise _chat_error(exc) from None
    finally:
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()
