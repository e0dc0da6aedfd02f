"""The kinds of work the provider sells (ports/jobs.py `Work`), by job kind.

`InferenceWork` is text generation (5050) and embeddings on the local model, at
`provider_price_sats` a job. Sandboxed code (5720) is the sandbox service's (sandbox/nip90.py),
fine-tuning (5740) the fine-tuning service's (finetune/nip90.py).
`Works` finds a request's work by its kind and lists the kinds this machine does now.
"""

from __future__ import annotations

from collections.abc import Sequence

from autopilotd.nostr.nip90 import (
    KIND_EMBEDDINGS,
    KIND_TEXT_GENERATION,
    JobRequest,
    embeddings_result,
)
from autopilotd.ports.inference import Inference, InferenceError
from autopilotd.ports.jobs import Work, WorkFailed
from autopilotd.runtime.configs import LiveConfig


class InferenceWork:
    kinds = frozenset({KIND_TEXT_GENERATION, KIND_EMBEDDINGS})
    needs: tuple[str, ...] = ("inference",)

    def __init__(self, inference: Inference, config: LiveConfig) -> None:
        self._inference = inference
        self._config = config

    def refusal(self) -> str | None:
        return None  # a model that is not ready yet makes jobs wait, not refused

    def min_bid_msat(self) -> int:
        return self._config.current.provider_price_sats * 1000

    def price_msat(self, request: JobRequest) -> int | str:
        return self.min_bid_msat()

    async def execute(self, request: JobRequest) -> str:
        cfg = self._config.current
        try:
            if request.kind == KIND_EMBEDDINGS:
                texts = [i.data for i in request.inputs if i.type == "text"]
                vectors = await self._inference.embed(texts, model=request.model)
                return embeddings_result(vectors, request.model or "default")
            completion = await self._inference.chat(
                [{"role": "user", "content": request.prompt or ""}],
                model=request.model or cfg.provider_model or None,
                max_tokens=min(request.max_tokens or 128, cfg.provider_max_tokens),
                temperature=request.temperature if request.temperature is not None else 0.7,
                top_p=request.top_p if request.top_p is not None else 1.0,
            )
        except InferenceError as exc:
            raise WorkFailed(f"inference failed: {exc.reason}") from None
        return completion.text


class Works:
    def __init__(self, works: Sequence[Work]) -> None:
        self._by_kind = {kind: work for work in works for kind in work.kinds}

    def get(self, kind: int) -> Work | None:
        return self._by_kind.get(kind)

    def served(self) -> tuple[int, ...]:
        """The kinds this machine does now (the NIP-89 handler names them)."""
        return tuple(sorted(k for k, w in self._by_kind.items() if w.refusal() is None))

    def kinds(self) -> tuple[int, ...]:
        """Every kind there is work for (the provider's subscription asks for them all)."""
        return tuple(sorted(self._by_kind))
