"""The eval gate: which checkpoints of a job may become a served model, and why not.

psionic evaluates the untuned base once and each checkpoint on the job's holdout split: the
mean loss over assistant tokens, and a pass rate where holdout lines say what a good answer
contains. A checkpoint passes when its holdout loss beats the base's by the relative margin
(`finetune_gate_margin`: loss ≤ base × (1 − margin)) and its pass rate is not below the
base's. Of those that pass, the one with the lowest holdout loss is the best.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autopilotd.store.finetune_records import FtCheckpoint

NO_HOLDOUT = (
    "no holdout eval of the base model: the job had no holdout split "
    "(give holdout_file, or a validation_file, when creating the job)"
)


@dataclass(frozen=True)
class Verdict:
    step: int
    loss: float | None
    pass_rate: float | None
    promotable: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss": self.loss,
            "pass_rate": self.pass_rate,
            "promotable": self.promotable,
            "reason": self.reason,
        }


def judge(base: dict[str, Any] | None, checkpoint: FtCheckpoint, margin: float) -> Verdict:
    result = checkpoint.eval
    loss = None if result is None else result.get("loss")
    rate = None if result is None else result.get("pass_rate")

    def verdict(ok: bool, reason: str) -> Verdict:
        return Verdict(checkpoint.step, loss, rate, ok, reason)

    if base is None or base.get("loss") is None:
        return verdict(False, NO_HOLDOUT)
    if loss is None:
        return verdict(False, f"step {checkpoint.step} has no holdout eval yet")
    needed = base["loss"] * (1 - margin)
    if loss > needed:
        return verdict(
            False,
            f"holdout loss {loss:.4f} does not beat the base's {base['loss']:.4f} by "
            f"{margin:.1%} (it needs at most {needed:.4f})",
        )
    base_rate = base.get("pass_rate")
    if base_rate is not None and (rate is None or rate < base_rate):
        shown = "none" if rate is None else f"{rate:.0%}"
        return verdict(False, f"pass rate {shown} is below the base's {base_rate:.0%}")
    return verdict(
        True,
        f"holdout loss {loss:.4f} beats the base's {base['loss']:.4f} by "
        f"{1 - loss / base['loss']:.1%} (margin {margin:.1%})"
        + ("" if base_rate is None else f"; pass rate {rate:.0%} vs {base_rate:.0%}"),
    )


def judge_all(
    base: dict[str, Any] | None, checkpoints: Sequence[FtCheckpoint], margin: float
) -> list[Verdict]:
    return [judge(base, c, margin) for c in checkpoints]


def best(verdicts: Sequence[Verdict]) -> Verdict | None:
    """The passing checkpoint with the lowest holdout loss (the later one on a tie)."""
    passing = [v for v in verdicts if v.promotable and v.loss is not None]
    return min(passing, key=lambda v: (v.loss, -v.step)) if passing else None
