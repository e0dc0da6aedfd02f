"""LoRA fine-tuning: the job ``psionic train --job-dir DIR`` runs (docs/psionic.md).

The job directory holds ``job.json`` and the data files; training appends its events to
``progress.jsonl``, checkpoints to ``checkpoints/`` (psionic/checkpoints.py), PEFT exports to
``exports/``, and writes ``result.json`` at the end. Run it again on the same directory and it
resumes from the newest valid checkpoint, exactly: the adapter, the optimizer, the schedule,
the random generators and the data position all come back, and the data order is a function
of (seed, epoch) rather than of the process's history.

One optimizer step consumes ``batch_size * grad_accum`` examples; the step's loss is the mean
over all of its assistant tokens, so accumulation gives the same gradient as one large batch.
Modes: ``lora`` (adapters on the chosen projections, the whole decoder run per step) and
``head_only`` (an adapter on the output head only, over final hidden states computed once by
the frozen decoder: each step is then a single matmul with the head).

A checkpoint that cannot be written (disk full) fails the job with ``checkpoint_write_failed``;
the previous checkpoint stays valid, so running the job again after freeing space resumes
from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from psionic import checkpoints
from psionic.device import cpu_has_native_bf16, resolve_device
from psionic.engine import Engine
from psionic.finetune_data import Example, Receipt, validate_jsonl
from psionic.lora import (
    adapter_state,
    attach_lora,
    base_weights_digest,
    load_adapter_state,
    read_adapter_dir,
    write_adapter_dir,
)
from psionic.model import masked_token_loss
from psionic.precision import Precision
from psionic.registry import default_models
from psionic.sampling import Sampler, SamplingParams
from psionic.train_files import Job, JobError, Progress
from psionic.weights import LlamaWeights, load_gguf, load_hf_folder

logger = logging.getLogger(__name__)


def schedule_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """The learning rate multiplier for 0-based ``step``: linear warmup, then the decay."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_base(name: str) -> Path:
    """A packaged model id (psionic/registry.py) or a path to a GGUF or llama folder."""
    for spec in default_models():
        if spec.id == name:
            return spec.path
    path = Path(name).expanduser()
    if path.exists():
        return path
    raise JobError("base_model_not_found", f"no model {name!r}: not a packaged id or a path")


def load_weights(path: Path) -> LlamaWeights:
    """As the runtime loads a chat model: a folder is Hugging Face's, a file a GGUF."""
    return load_hf_folder(path) if path.is_dir() else load_gguf(path)


def _pad(rows: Sequence[Sequence[Any]], value: Any, dtype: torch.dtype) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[*r, *[value] * (width - len(r))] for r in rows], dtype=dtype)


@dataclass(frozen=True)
class Packed:
    """A batch packed into one row: its examples' tokens laid end to end, no padding.

    ``hidden_states(tokens, lengths)`` gives each example block-diagonal causal attention
    and rotary positions from 0, so its logits and loss are exactly those it has alone, while
    no compute goes to padding. ``mask`` is the loss mask, false at each example's first
    token, so no loss is taken across a boundary (predicting an example's first token from
    the previous example's last). The layout is a function of the examples alone, so a
    resumed run packs its steps exactly as an uninterrupted one.
    """

    tokens: Tensor  # (1, T) with T = sum(lengths)
    mask: Tensor  # (1, T)
    lengths: tuple[int, ...]

    @classmethod
    def of(cls, examples: Sequence[Example], device: torch.device) -> Packed:
        tokens = [t for e in examples for t in e.tokens]
        mask = [m and k > 0 for e in examples for k, m in enumerate(e.mask)]
        return cls(
            torch.tensor([tokens], dtype=torch.long, device=device),
            torch.tensor([mask], dtype=torch.bool, device=device),
            tuple(len(e.tokens) for e in examples),
        )


class Training:
    """One job's model, data, optimizer and loop."""

    def __init__(self, job: Job, progress: Progress, stop: Callable[[], bool]) -> None:
        self.job, self.progress, self.stop, self.hp = job, progress, stop, job.hyper
        hp = self.hp
        if hp.threads:
            torch.set_num_threads(hp.threads)
        self.device = resolve_device("auto")
        self.bf16 = hp.precision == "bf16" or (
            hp.precision == "auto"
            and (
                torch.cuda.is_bf16_supported()
                if self.device.type == "cuda"
                else cpu_has_native_bf16()
            )
        )
        if not self.bf16:
            # Reproducible fp32: the same job gives the same losses and adapter bits (cuBLAS
            # needs a fixed workspace for that, set before its first use).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            # Deterministic mode also fills every new tensor with NaN to expose reads of
            # uninitialised memory, a debugging aid that costs ~10 % of a CPU step.
            torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        base_path = resolve_base(job.base_model)
        self.base_digest = base_weights_digest(base_path)
        weights = load_weights(base_path)
        self.tokenizer = weights.tokenizer
        self.train_set = self._examples(job.train, "training", required=True)
        self.holdout = self._examples(job.holdout, "holdout").examples
        self.validation = self._examples(job.validation, "validation").examples
        self.engine = Engine(weights, self.device, Precision.FP32, prefix_cache_bytes=0)
        self.model = self.engine.model
        self.spec = hp.spec()
        torch.manual_seed(hp.seed)
        random.seed(hp.seed)
        attach_lora(self.model, self.spec, seed=hp.seed)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=hp.learning_rate, weight_decay=hp.weight_decay, foreach=False
        )
        examples = self.train_set.examples
        per_step = hp.batch_size * hp.grad_accum
        self.total_steps = hp.max_steps or hp.n_epochs * math.ceil(len(examples) / per_step)
        total = self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: schedule_factor(s, total, hp.warmup_steps, hp.schedule)
        )
        self.hidden: list[Tensor] | None = None
        self._perms: dict[int, list[int]] = {}

    def _examples(self, text: str | None, split: str, required: bool = False) -> Receipt:
        receipt = validate_jsonl(text or "", self.tokenizer, self.hp.max_seq_len)
        if receipt.rejected:
            first = receipt.rejected[0]
            logger.warning(
                "%s file: %d lines rejected, first line %d: %s",
                split,
                len(receipt.rejected),
                first["line"],
                first["reason"],
            )
        if required and not receipt.examples:
            detail = f"; line {first['line']}: {first['reason']}" if receipt.rejected else ""
            raise JobError("invalid_training_file", f"no usable training examples{detail}")
        return receipt

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "base_model": self.job.base_model,
            "base_digest": self.base_digest,
            "job": self.job.id,
        }

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _order(self, epoch: int) -> list[int]:
        """The epoch's data order: a permutation seeded by (seed, epoch) alone."""
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.hp.seed * 1_000_003 + epoch)
            n = len(self.train_set.examples)
            self._perms[epoch] = torch.randperm(n, generator=generator).tolist()
        return self._perms[epoch]

    def step_examples(self, step: int) -> list[int]:
        """The examples of 0-based ``step``: the next ``batch_size * grad_accum`` of the
        stream of epoch orders, so the data position is a function of the step alone."""
        per_step = self.hp.batch_size * self.hp.grad_accum
        n = len(self.train_set.examples)
        out = []
        for k in range(step * per_step, (step + 1) * per_step):
            epoch, i = divmod(k, n)
            out.append(self._order(epoch)[i])
        return out

    def _hidden(self, batch: Packed, indices: Sequence[int]) -> Tensor:
        """Final hidden states of a packed batch: computed, or (head_only) the precomputed
        ones laid end to end the same way."""
        if self.hidden is None:
            return self.model.hidden_states(batch.tokens, batch.lengths)
        return torch.cat([self.hidden[i] for i in indices])[None]

    def batch(self, examples: Sequence[Example]) -> tuple[Tensor, Tensor]:
        """Token ids and loss mask, padded on the right (padding carries no loss, and causal
        attention keeps it from affecting the real tokens). What a padded trainer (the
        benchmark's transformers + PEFT) is given; psionic's own steps use ``pack``."""
        tokens = _pad([e.tokens for e in examples], 0, torch.long).to(self.device)
        mask = _pad([e.mask for e in examples], False, torch.bool).to(self.device)
        return tokens, mask

    def pack(self, examples: Sequence[Example]) -> Packed:
        """``examples`` laid end to end in one row, no padding (``Packed``)."""
        return Packed.of(examples, self.device)

    def train_step(self, step: int) -> tuple[float, int, float]:
        """One optimizer step (0-based ``step``): (mean loss, tokens seen, learning rate)."""
        self.model.train()
        indices = self.step_examples(step)
        examples = [self.train_set.examples[i] for i in indices]
        count = sum(sum(e.mask[1:]) for e in examples)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        bs = self.hp.batch_size
        for start in range(0, len(indices), bs):
            chunk = indices[start : start + bs]
            batch = self.pack([self.train_set.examples[i] for i in chunk])
            with self._autocast():
                hidden = self._hidden(batch, chunk)
                loss, _ = masked_token_loss(self.model.output, hidden, batch.tokens, batch.mask)
            torch.autograd.backward(loss / count)
            total += float(loss.detach())
        if self.hp.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.hp.clip, foreach=False)
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        return total / count, sum(len(e.tokens) for e in examples), lr

    @torch.no_grad()
    def loss_on(self, examples: Sequence[Example]) -> float:
        """Mean loss over the assistant tokens of ``examples`` (dropout off)."""
        self.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(examples), self.hp.batch_size):
            batch = self.pack(examples[start : start + self.hp.batch_size])
            with self._autocast():
                hidden = self.model.hidden_states(batch.tokens, batch.lengths)
                loss, n = masked_token_loss(self.model.output, hidden, batch.tokens, batch.mask)
            total, count = total + float(loss), count + n
        return total / max(1, count)

    def evaluate(self, subject: str, step: int | None) -> None:
        """Holdout loss and pass rate, as an eval event; the random generators are left as
        they were, so evaluating never changes what training does next."""
        if not self.holdout:
            return
        saved = checkpoints.rng_state()
        loss = self.loss_on(self.holdout)
        graded = [e for e in self.holdout if e.pass_if_contains is not None]
        passed = 0
        greedy = Sampler(SamplingParams(temperature=0), self.device)
        for example in graded:
            ids = self.engine.generate_ids(
                example.prompt,
                self.hp.eval_max_tokens,
                greedy,
                self.tokenizer.stop_ids,
                reuse_prefix=False,
            )
            text = self.tokenizer.decode(list(ids))
            passed += str(example.pass_if_contains).lower() in text.lower()
        pass_rate = passed / len(graded) if graded else None
        checkpoints.set_rng_state(saved)
        self.progress.emit(
            "eval", subject=subject, step=step, loss=loss, pass_rate=pass_rate, n=len(self.holdout)
        )

    def save(self, step: int, train_loss: float) -> None:
        """Checkpoint, then export, then evaluate: each announced in progress.jsonl."""
        trainer = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoints.rng_state(),
        }
        per_step = self.hp.batch_size * self.hp.grad_accum
        epoch, position = divmod(step * per_step, len(self.train_set.examples))
        state = {"train_loss": train_loss, "epoch": epoch, "position": position}
        if self.validation:
            state["validation_loss"] = self.loss_on(self.validation)
        root = self.job.dir / "checkpoints"
        try:
            checkpoint = checkpoints.write_checkpoint(
                root, step, adapter_state(self.model), self.spec, self.meta, trainer, state
            )
        except OSError as exc:
            raise JobError(
                "checkpoint_write_failed",
                f"writing the checkpoint at step {step} failed ({exc}); "
                "the previous checkpoint is intact and the job resumes from it when run again",
            ) from exc
        checkpoints.prune(root, self.hp.keep_checkpoints)
        self._announce(checkpoint)

    def _announce(self, checkpoint: checkpoints.Checkpoint) -> None:
        """Write whatever of checkpoint/export/eval the log lacks for this checkpoint (after
        a crash between them, the resumed run completes them)."""
        step = checkpoint.step
        name = checkpoints.step_name(step)
        meta, _ = read_adapter_dir(checkpoint.adapter_dir)
        digest = meta["adapter_digest"]
        if self.progress.last("checkpoint", step=step, digest=digest) is None:
            extra = {k: v for k, v in checkpoint.state.items() if k == "validation_loss"}
            self.progress.emit(
                "checkpoint",
                step=step,
                digest=digest,
                path=f"checkpoints/{name}",
                train_loss=checkpoint.state["train_loss"],
                **extra,
            )
        if self.progress.last("export", step=step, digest=digest) is None:
            try:
                info = write_adapter_dir(
                    self.job.dir / "exports" / name,
                    adapter_state(self.model),
                    self.spec,
                    {**self.meta, "step": step},
                )
            except OSError as exc:
                raise JobError("export_failed", f"exporting step {step} failed: {exc}") from exc
            self.progress.emit(
                "export", step=step, path=f"exports/{name}", digest=info["adapter_digest"]
            )
        wants_eval = self.hp.eval_every_checkpoint or step == self.total_steps
        if wants_eval and self.progress.last("eval", subject="checkpoint", step=step) is None:
            self.evaluate("checkpoint", step)

    def resume(self) -> int:
        """Load the newest valid checkpoint, if any; return the step to continue from."""
        checkpoint = checkpoints.latest(self.job.dir / "checkpoints")
        if checkpoint is None:
            return 0
        _, state = read_adapter_dir(checkpoint.adapter_dir)
        load_adapter_state(self.model, state)
        trainer = checkpoint.trainer_state()
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        checkpoints.set_rng_state(trainer["rng"])
        logger.info("resuming from %s", checkpoint.path)
        self._announce(checkpoint)
        return checkpoint.step

    def _precompute_hidden(self) -> None:
        """head_only: the frozen decoder's final hidden states of every example, once."""
        self.model.eval()
        with torch.no_grad(), self._autocast():
            self.hidden = [
                self.model.hidden_states(torch.tensor([e.tokens], device=self.device))[0].float()
                for e in self.train_set.examples
            ]

    def run(self) -> str:
        """Train to the end or until ``stop()``; return "succeeded" or "cancelled"."""
        hp = self.hp
        start = self.resume()
        if start == 0 and self.progress.last("eval", subject="base") is None:
            self.evaluate("base", None)
        if hp.mode == "head_only":
            self._precompute_hidden()
        since: list[float] = []
        started = time.monotonic()
        for step in range(start, self.total_steps):
            if self.stop():
                return "cancelled"
            loss, tokens, lr = self.train_step(step)
            since.append(loss)
            done = step + 1
            self.progress.emit(
                "step",
                step=done,
                total_steps=self.total_steps,
                loss=loss,
                lr=lr,
                tokens=tokens,
                elapsed_s=round(time.monotonic() - started, 3),
            )
            if done % hp.checkpoint_every == 0 or done == self.total_steps:
                self.save(done, sum(since) / len(since))
                since = []
        return "succeeded"


def run_job(job_dir: Path, stop: Callable[[], bool] = lambda: False) -> int:
    """Run (or resume) the job in ``job_dir``; the process exit code: 0 succeeded or
    cancelled, 1 failed (after a failed status line with an error code)."""
    progress = Progress(job_dir / "progress.jsonl")
    try:
        job = Job.load(job_dir)
        progress.status("running", f"training {job.base_model}")
        status = Training(job, progress, stop).run()
    except JobError as exc:
        _finish(
            job_dir, progress, "failed", exc.message, {"code": exc.code, "message": exc.message}
        )
        return 1
    except Exception as exc:
        logger.exception("training failed")
        message = f"internal error: {type(exc).__name__}: {exc}"
        _finish(
            job_dir, progress, "failed", message, {"code": "internal_error", "message": message}
        )
        return 1
    message = "training finished" if status == "succeeded" else "cancelled at a step boundary"
    _finish(job_dir, progress, status, message, None)
    return 0


def _finish(
    job_dir: Path,
    progress: Progress,
    status: str,
    message: str,
    error: dict[str, str] | None,
) -> None:
    """result.json first, then the final status line (a reader that sees the line finds
    the result)."""
    try:
        tmp = job_dir / "result.json.tmp"
        tmp.write_text(json.dumps(progress.result(status), indent=2))
        tmp.replace(job_dir / "result.json")
    except OSError:
        logger.exception("cannot write result.json")
    progress.status(status, message, error)
