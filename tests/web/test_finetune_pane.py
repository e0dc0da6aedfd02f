"""The Fine-tuning pane: jobs, the picked job's loss curve (an inline SVG polyline drawn on
the server), checkpoints, the eval (base vs checkpoints) with the gate's verdicts, promotion
and why, Promote from the pane, and the tenants. A fake trainer stands in for psionic."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path
from typing import Any

from support import DaemonFactory, InProcessDaemon

from autopilotd.adapters.fake_trainer import BASE_MODEL, FakeTrainer
from autopilotd.app import Adapters
from autopilotd.web.sources import loss_curve

TAG_RE = re.compile(r"<[^>]+>")
LINES = (
    '{"messages": [{"role": "user", "content": "sky?"}, '
    '{"role": "assistant", "content": "Blue."}], "pass_if_contains": "blue"}\n'
)


def _text(html: str) -> str:
    return " ".join(html_lib.unescape(TAG_RE.sub(" ", html)).split())


async def _finished_job(d: InProcessDaemon, trainer: FakeTrainer) -> str:
    """A job of tenant acme that succeeded, started through the service (the tenant API's
    path is tests/finetune's)."""
    import openai

    made = await d.call("finetune.tenant.create", {"tenant": "acme"})
    url = (await d.call("finetune.status"))["api_url"]
    async with openai.AsyncOpenAI(api_key=made["api_key"], base_url=url, max_retries=0) as c:
        f = await c.files.create(file=("t.jsonl", LINES.encode()), purpose="fine-tune")
        job = await c.fine_tuning.jobs.create(
            model=BASE_MODEL, training_file=f.id, extra_body={"holdout_file": f.id}
        )
    seq = 0
    while True:
        status = await d.call("status.wait", {"after_seq": seq, "timeout_s": 5})
        seq = status["seq"]
        jobs = status["finetune"]["jobs"]
        if jobs and jobs[0]["status"] == "succeeded":
            return job.id


def test_the_loss_curve_is_scaled_into_its_box() -> None:
    curve = loss_curve([(1, 2.0), (2, 1.5), (3, 1.0)])
    assert curve is not None
    assert curve["points"] == "0.0,0.0 160.0,60.0 320.0,120.0"
    assert loss_curve([(1, 2.0)]) is None


async def test_the_pane_shows_a_job_its_curve_evals_promotion_and_tenants(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    trainer = FakeTrainer(eval_loss=lambda step: {2: 1.99, 4: 1.5}[step])
    d = await daemon_factory(
        adapters=Adapters(trainer=trainer),
        finetune_poll_s=0.05,
        finetune_auto_promote=False,
        home=tmp_path / "web",
    )
    job_id = await _finished_job(d, trainer)
    web = await web_login(d)
    status, html = await web.get("/pane/finetune")
    assert status == 200
    text = _text(html)
    assert "<h2>Fine-tuning</h2>" in html and f'data-job="{job_id}"' in html
    assert 'data-testid="finetune-loss-curve"' in html
    points = re.search(r'<polyline class="line" points="([^"]+)"', html)
    assert points is not None and len(points.group(1).split()) == 4  # one per step
    assert "loss 1.7500 → 1.0000" in text
    assert "base model 2.0000 — —" in text
    assert "step 2 1.9900" in text and "held: holdout loss 1.9900 does not beat" in text
    assert "step 4 1.5000" in text and "passes: holdout loss 1.5000 beats" in text
    assert "not promoted" in text and 'data-testid="finetune-promote"' in html
    assert "acme" in text and "0 / 1" in text  # active jobs of its quota

    status, html = await web.do("finetune.promote", {"job_id": job_id}, pane="finetune")
    assert status == 200, html
    text = _text(html)
    assert "promoted (step 4, revision" in text and "ft:fake-chat:acme:" in text
    _, data = await web.get_json(f"/pane/finetune?job={job_id}")
    assert data["job"]["promotion"]["state"] == "promoted"
    assert data["curve"]["last"] == 1.0 and data["models"][0]["step"] == 4
