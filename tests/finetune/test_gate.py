"""The eval gate's rule, alone: the margin on holdout loss, the pass rate, and the best."""

from __future__ import annotations

from autopilotd.finetune.gate import NO_HOLDOUT, best, judge, judge_all
from autopilotd.store.finetune_records import FtCheckpoint


def ckpt(step: int, loss: float | None, rate: float | None = None) -> FtCheckpoint:
    result = None if loss is None else {"loss": loss, "pass_rate": rate, "n": 4}
    return FtCheckpoint("job", step, "d" * 64, 1.0, result, 0.0)


def test_the_loss_must_beat_the_base_by_the_margin() -> None:
    base = {"loss": 2.0, "pass_rate": None, "n": 4}
    assert judge(base, ckpt(1, 1.96), 0.02).promotable  # exactly 2 % better
    refused = judge(base, ckpt(2, 1.97), 0.02)
    assert not refused.promotable and "it needs at most 1.9600" in refused.reason
    assert judge(base, ckpt(3, 1.99), 0.0).promotable


def test_the_pass_rate_may_not_fall_below_the_bases() -> None:
    base = {"loss": 2.0, "pass_rate": 0.5, "n": 4}
    assert judge(base, ckpt(1, 1.0, 0.5), 0.02).promotable
    assert not judge(base, ckpt(2, 1.0, 0.25), 0.02).promotable
    assert "pass rate none" in judge(base, ckpt(3, 1.0, None), 0.02).reason


def test_no_holdout_and_no_eval_are_refusals_that_say_so() -> None:
    assert judge(None, ckpt(1, 1.0), 0.02).reason == NO_HOLDOUT
    assert "no holdout eval yet" in judge({"loss": 2.0}, ckpt(1, None), 0.02).reason


def test_the_best_is_the_lowest_passing_loss() -> None:
    base = {"loss": 2.0, "pass_rate": None, "n": 4}
    verdicts = judge_all(base, [ckpt(1, 1.5), ckpt(2, 1.2), ckpt(3, 1.99)], 0.02)
    chosen = best(verdicts)
    assert chosen is not None and chosen.step == 2
    assert best(judge_all(base, [ckpt(1, 1.99)], 0.02)) is None
