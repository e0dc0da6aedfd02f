"""LoRA fine-tuning benchmark: training tokens/s of psionic against transformers + PEFT, and
what checkpoints cost.

    python bench/finetune.py --threads 2 --steps 20 --batch 4 --seq-len 128

Both train SmolLM2-135M-Instruct (the same fp32 weights) with LoRA r=8, alpha=16 on q, k, v
and o, starting from the same adapter (psionic's initial one, loaded into PEFT), on the same
batches in the same order, with AdamW (constant learning rate), clipping at 1.0, the loss
over assistant tokens only. psionic runs its job's own step (``Training.train_step``), which
packs each batch into one row without padding (block-diagonal causal attention, positions
restarting per example); transformers + PEFT gets the standard right-padded batch, as its
users run it: ``model(input_ids, attention_mask, labels)`` with -100 outside the mask. Both
compute the same per-example losses, so the comparison is of the same work.
The two alternate step by step, so other load on the machine falls on both alike; both
run under the fp32 job's deterministic-algorithms setting.
Tokens/s counts every real token of a step's examples (padding is not counted for either)
over the step's wall time, step 0 excluded. Parity: step-0 losses within 1e-3 (the adapter
starts at zero), the last step's within 2 %.

Then: the time and size of one checkpoint (adapter, optimizer, RNG states, manifest, all
fsynced) and of its PEFT export, and the resume overhead: reading and verifying the newest
checkpoint and loading it into a freshly built job.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` sets it

import torch

from psionic import checkpoints
from psionic.lora import adapter_state, write_adapter_dir
from psionic.reference import hf_llama
from psionic.registry import DEFAULT_CHAT_ID
from psionic.train_files import Job, Progress
from psionic.training import Training, load_weights, resolve_base

TOPICS = ["the sea", "a lighthouse", "bread", "a violin", "the moon", "rain", "a library", "bees"]
FACTS = [
    "People have written about {topic} for centuries.",
    "Some find {topic} restful; others find it strange.",
    "A painter might show {topic} in blue and grey.",
    "Children often ask questions about {topic}.",
    "There are old songs and new songs about {topic}.",
    "Scientists have measured {topic} in careful detail.",
    "On a quiet morning, {topic} seems close and simple.",
    "Nobody agrees on the best way to describe {topic}.",
    "A short walk is enough to notice {topic} again.",
]
STYLES = ["in three calm sentences", "as a pirate would", "for a child", "in formal English"]


def write_data(job_dir: Path, seq_len: int, batch: int, steps: int, lr: float) -> None:
    """Conversations with a fixed template reply, long enough to fill about ``seq_len``."""
    lines = []
    for i in range(batch * (steps + 1)):
        topic, style = TOPICS[i % len(TOPICS)], STYLES[i % len(STYLES)]
        facts = [FACTS[(i * 7 + k * 3) % len(FACTS)].format(topic=topic) for k in range(4)]
        reply = f"Here is {topic}, described {style}. " + " ".join(facts)
        messages = [
            {"role": "user", "content": f"Describe {topic} {style}. (#{i})"},
            {"role": "assistant", "content": reply},
        ]
        lines.append(json.dumps({"messages": messages}))
    (job_dir / "train.jsonl").write_text("\n".join(lines))
    hyper = {
        "max_steps": steps + 1,
        "batch_size": batch,
        "learning_rate": lr,
        "schedule": "constant",
        "precision": "fp32",
        "max_seq_len": seq_len,
        "checkpoint_every": 10_000,
    }
    job = {"id": "bench", "base_model": DEFAULT_CHAT_ID, "train": "train.jsonl"}
    (job_dir / "job.json").write_text(json.dumps({**job, "hyperparameters": hyper}))


class HfTrainer:
    """The same steps with transformers + PEFT, from the adapter exported at ``export``."""

    def __init__(self, training: Training, export: Path, lr: float) -> None:
        peft: Any = importlib.import_module("peft")
        base = hf_llama(load_weights(resolve_base(DEFAULT_CHAT_ID)), torch.float32)
        self.model = peft.PeftModel.from_pretrained(base, str(export), is_trainable=True)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0, foreach=False)
        self.training = training

    def step(self, step: int) -> dict[str, float]:
        examples = [self.training.train_set.examples[i] for i in self.training.step_examples(step)]
        tokens, mask = self.training.batch(examples)
        labels = torch.where(mask, tokens, torch.full_like(tokens, -100))
        attention = torch.zeros_like(tokens)
        for row, example in enumerate(examples):
            attention[row, : len(example.tokens)] = 1
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(input_ids=tokens, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=False)
        self.optimizer.step()
        elapsed = time.perf_counter() - started
        count = sum(len(e.tokens) for e in examples)
        return {"loss": float(loss.detach()), "s": elapsed, "tokens": count}


def tok_s(rows: list[dict[str, float]]) -> float:
    timed = rows[1:]
    return sum(r["tokens"] for r in timed) / sum(r["s"] for r in timed)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        job_dir = Path(tmp) / "job"
        job_dir.mkdir()
        write_data(job_dir, args.seq_len, args.batch, args.steps, args.lr)
        job = Job.load(job_dir)
        training = Training(job, Progress(job_dir / "progress.jsonl"), lambda: False)
        torch.set_num_threads(args.threads)
        start_export = Path(tmp) / "initial"
        write_adapter_dir(start_export, training.model, training.spec, training.meta)
        hf = HfTrainer(training, start_export, args.lr)
        # Alternate the two, step by step, so that load from anything else on the machine
        # falls on both alike.
        ours, theirs = [], []
        for step in range(args.steps + 1):
            started = time.perf_counter()
            loss, tokens, _ = training.train_step(step)
            ours.append({"loss": loss, "s": time.perf_counter() - started, "tokens": tokens})
            theirs.append(hf.step(step))
        del hf

        started = time.perf_counter()
        training.save(args.steps + 1, ours[-1]["loss"])
        save_s = time.perf_counter() - started
        root = job_dir / "checkpoints"
        ckpt = root / checkpoints.step_name(args.steps + 1)
        export = job_dir / "exports" / checkpoints.step_name(args.steps + 1)
        started = time.perf_counter()
        write_adapter_dir(Path(tmp) / "again", adapter_state(training.model), training.spec, {})
        export_s = time.perf_counter() - started

        started = time.perf_counter()
        fresh = Training(job, Progress(job_dir / "progress.jsonl"), lambda: False)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        resumed_at = fresh.resume()
        resume_s = time.perf_counter() - started
        assert resumed_at == args.steps + 1
        del fresh

        ckpt_mb, export_mb = du(ckpt) / 1e6, du(export) / 1e6
    last = args.steps
    seq = max(len(e.tokens) for e in training.train_set.examples)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, fp32, batch {args.batch}, longest example {seq} tokens, "
        f"LoRA r=8 alpha=16 q,k,v,o, {args.steps} timed steps"
    )
    print(f"| trainer | tokens/s | step-0 loss | step-{last} loss |")
    print("|---|---|---|---|")
    for name, rows in (("psionic", ours), ("transformers + peft", theirs)):
        print(f"| {name} | {tok_s(rows):.0f} | {rows[0]['loss']:.5f} | {rows[last]['loss']:.5f} |")
    d0 = abs(ours[0]["loss"] - theirs[0]["loss"])
    dn = abs(ours[last]["loss"] - theirs[last]["loss"]) / theirs[last]["loss"]
    print(
        f"parity: step 0 differs by {d0:.2e} (≤ 1e-3: {d0 <= 1e-3}), "
        f"step {last} by {dn:.2%} (≤ 2 %: {dn <= 0.02})"
    )
    print(
        f"checkpoint: {save_s * 1000:.0f} ms written with its export, "
        f"{ckpt_mb:.2f} MB (adapter + optimizer + RNG); export alone "
        f"{export_s * 1000:.0f} ms, {export_mb:.2f} MB"
    )
    print(
        f"resume: {resume_s * 1000:.0f} ms to verify and load the checkpoint, on top of "
        f"{build_s:.1f} s to build the job (load weights, tokenise data)"
    )


if __name__ == "__main__":
    main()
