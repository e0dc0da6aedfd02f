"""A job's hyperparameters: OpenAI's three, and psionic's own (`psionic train`'s, less the
machine's `threads`, which are the owner's; `seed` and `max_seq_len` come from the job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autopilotd.errors import UserError

DEFAULT_EPOCHS = 3  # psionic's, when a job names none
MAY_BE_ZERO = frozenset({"warmup_steps", "weight_decay", "lora_dropout"})
OPENAI_HYPERPARAMETERS = {"n_epochs": int, "batch_size": int, "learning_rate_multiplier": float}
PSIONIC_HYPERPARAMETERS: dict[str, type] = {
    "max_steps": int,
    "learning_rate": float,
    "warmup_steps": int,
    "schedule": str,
    "weight_decay": float,
    "clip": float,
    "grad_accum": int,
    "lora_r": int,
    "lora_alpha": float,
    "lora_dropout": float,
    "targets": list,
    "mode": str,
    "precision": str,
    "max_seq_len": int,
    "checkpoint_every": int,
    "keep_checkpoints": int,
    "eval_every_checkpoint": bool,
    "eval_max_tokens": int,
}


def check_hyperparameters(given: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters a job asks for, each checked; "auto" and None are left out (psionic's
    default)."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        kind = OPENAI_HYPERPARAMETERS.get(name) or PSIONIC_HYPERPARAMETERS.get(name)
        if kind is None:
            raise UserError(
                f"unknown hyperparameter {name!r}",
                data={"code": "invalid_hyperparameter", "param": f"hyperparameters.{name}"},
            )
        if value is None or value == "auto":
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise UserError(
                f"hyperparameter {name} must be a {getattr(kind, '__name__', kind)}",
                data={"code": "invalid_hyperparameter", "param": f"hyperparameters.{name}"},
            )
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value <= 0
            and name not in MAY_BE_ZERO
        ):
            raise UserError(
                f"hyperparameter {name} must be positive",
                data={"code": "invalid_hyperparameter", "param": f"hyperparameters.{name}"},
            )
        out[name] = value
    return out
