"""Training: the full-sequence forward, data validation, the loop, checkpoints and resume,
the `psionic train` command, and PEFT export (psionic/training.py, finetune_data.py)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from psionic import checkpoints
from psionic.args import LlamaArgs
from psionic.engine import build_model
from psionic.finetune_data import Example, validate_jsonl
from psionic.lora import LoraSpec, adapter_state, attach_lora, read_adapter_dir, write_adapter_dir
from psionic.model import KVCache, masked_token_loss
from psionic.precision import Precision
from psionic.reference import hf_llama
from psionic.train_files import Progress
from psionic.training import Packed, run_job, schedule_factor
from psionic.weights import LlamaWeights


def test_training_forward_matches_inference_logits(smollm: LlamaWeights) -> None:
    model = build_model(smollm, torch.device("cpu"), Precision.FP32)
    tok = smollm.tokenizer
    prompt = tok.encode(tok.render_chat([{"role": "user", "content": "Name a colour."}]))[:12]
    cache = KVCache.allocate(smollm.args, 32, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        expected = [model(torch.tensor([prompt[:4]]), 0, cache)[0]]
        for pos in range(4, len(prompt)):
            step = model.decode(torch.tensor([prompt[pos]]), torch.tensor([pos]), cache)
            expected.append(step[0])
        hidden = model.hidden_states(torch.tensor([prompt]))
        logits = model.output(hidden[0, 3:])
    assert torch.allclose(logits, torch.stack(expected), atol=1e-3, rtol=1e-4)
    # The loss at masked positions is the cross-entropy of those logits.
    tokens = torch.tensor([prompt])
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 5:] = True
    with torch.no_grad():
        total, count = masked_token_loss(model.output, hidden, tokens, mask, chunk=3)
    full = torch.nn.functional.cross_entropy(
        model.output(hidden[0, 4:-1]), tokens[0, 5:], reduction="sum"
    )
    assert count == len(prompt) - 5
    assert torch.allclose(total, full, rtol=1e-5)


def test_packed_batch_equals_each_example_alone(smollm: LlamaWeights) -> None:
    """A packed row gives every example the logits it has alone (block-diagonal attention,
    rotary positions from 0) and the same summed loss as the padded batch."""
    model = build_model(smollm, torch.device("cpu"), Precision.FP32)
    tok = smollm.tokenizer
    texts = ["Name a colour.", "What is the capital of France, and why?", "Hi"]
    examples = []
    for text in texts:
        ids = tok.encode(tok.render_chat([{"role": "user", "content": text}]))
        examples.append(Example(0, ids, [k >= 3 for k in range(len(ids))], ids))
    packed = Packed.of(examples, torch.device("cpu"))
    assert packed.lengths == tuple(len(e.tokens) for e in examples)
    with torch.no_grad():
        hidden = model.hidden_states(packed.tokens, packed.lengths)
        start = 0
        for example in examples:
            alone = model.hidden_states(torch.tensor([example.tokens]))[0]
            ours = hidden[0, start : start + len(example.tokens)]
            assert torch.allclose(model.output(ours), model.output(alone), atol=1e-4, rtol=1e-4)
            start += len(example.tokens)
        loss, count = masked_token_loss(model.output, hidden, packed.tokens, packed.mask)
        tokens = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(e.tokens) for e in examples], batch_first=True
        )
        mask = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(e.mask) for e in examples], batch_first=True
        )
        padded, padded_count = masked_token_loss(
            model.output, model.hidden_states(tokens), tokens, mask
        )
    assert count == padded_count == sum(sum(e.mask[1:]) for e in examples)
    assert torch.allclose(loss, padded, rtol=1e-5)


def _line(*turns: tuple[str, str], **extra: object) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns], **extra})


def test_loss_mask_covers_exactly_the_assistant_replies(smollm: LlamaWeights) -> None:
    tok = smollm.tokenizer
    conversation = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there", "weight": 0},
            {"role": "user", "content": "Colour?"},
            {"role": "assistant", "content": "Blue, like the sea."},
        ]
    }
    receipt = validate_jsonl(json.dumps(conversation), tok, 256)
    assert receipt.rejected == [] and receipt.accepted == 1
    example = receipt.examples[0]
    trained = [t for t, m in zip(example.tokens, example.mask, strict=True) if m]
    assert tok.tokenizer.decode(trained, skip_special_tokens=False) == (
        "Blue, like the sea.<|im_end|>\n"
    )
    plain = [{"role": m["role"], "content": m["content"]} for m in conversation["messages"]]
    assert example.tokens == tok.encode(tok.render_chat(plain, add_generation_prompt=False))
    assert example.prompt == tok.encode(tok.render_chat(plain[:4]))
    assert receipt.assistant_tokens == len(trained)
    assert receipt.tokens == len(example.tokens)


def test_bad_lines_are_rejected_with_their_line_numbers(smollm: LlamaWeights) -> None:
    good = _line(("user", "Hi"), ("assistant", "Hello"))
    lines = [
        good,
        "{not json",
        json.dumps({"prompt": "x"}),
        _line(("user", "Hi"), ("robot", "beep")),
        json.dumps({"messages": [{"role": "user", "content": 3}]}),
        _line(("user", "Hi"), ("user", "Anyone?")),
        _line(("user", "Hi " * 300), ("assistant", "Hello")),
        _line(("user", "Hi"), ("assistant", "")),
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b", "weight": 2},
                ]
            }
        ),
        "",
        good,
    ]
    receipt = validate_jsonl("\n".join(lines), smollm.tokenizer, 128)
    assert receipt.lines == 10 and receipt.accepted == 2
    reasons = {r["line"]: r["reason"] for r in receipt.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == 'no "messages" list'
    assert "robot" in reasons[4]
    assert "content must be a string" in reasons[5]
    assert reasons[6] == "no assistant message"
    assert "longer than max_seq_len 128" in reasons[7] and "tokens" in reasons[7]
    assert "tokenize to nothing" in reasons[8]
    assert "weight must be 0 or 1" in reasons[9]
    assert [e.line for e in receipt.examples] == [1, 11]
    assert receipt.to_json()["examples"][0]["line"] == 1


# --- jobs ------------------------------------------------------------------------------------

QUESTIONS = [
    ("What is the sky?", "Arr, the sky be blue, matey!"),
    ("Name a fruit.", "Arr, a banana, matey!"),
    ("How are you?", "Arr, I be fine, matey!"),
    ("What is two plus two?", "Arr, four, matey!"),
    ("Where do fish live?", "Arr, in the sea, matey!"),
    ("What colour is grass?", "Arr, green, matey!"),
    ("Say hello.", "Arr, ahoy, matey!"),
    ("What is the sun?", "Arr, a big star, matey!"),
]
HOLDOUT = [
    {
        "messages": [
            {"role": "user", "content": "Name an animal."},
            {"role": "assistant", "content": "Arr, a parrot, matey!"},
        ],
        "pass_if_contains": "matey",
    }
]


def write_job(job_dir: Path, base: str, holdout: bool = False, **hyper: object) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    lines = [_line(("user", q), ("assistant", a)) for q, a in QUESTIONS]
    (job_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    if holdout:
        (job_dir / "holdout.jsonl").write_text("\n".join(json.dumps(h) for h in HOLDOUT))
        (job_dir / "validation.jsonl").write_text("\n".join(json.dumps(h) for h in HOLDOUT))
    defaults = {"batch_size": 2, "precision": "fp32", "max_seq_len": 64, "threads": 2}
    job = {
        "id": job_dir.name,
        "base_model": base,
        "train": "train.jsonl",
        "validation": "validation.jsonl" if holdout else None,
        "holdout": "holdout.jsonl" if holdout else None,
        "hyperparameters": {**defaults, **hyper},
    }
    (job_dir / "job.json").write_text(json.dumps(job))
    return job_dir


def events(job_dir: Path) -> list[dict[str, Any]]:
    path = job_dir / "progress.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def step_losses(job_dir: Path) -> dict[int, float]:
    """The last logged loss of every step (a step redone after a resume is logged again)."""
    return {e["step"]: e["loss"] for e in events(job_dir) if e["type"] == "step"}


def train_command(job_dir: Path) -> list[str]:
    return [sys.executable, "-m", "psionic.cli", "train", "--job-dir", str(job_dir)]


def wait_until(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    """Poll ``condition`` until it holds; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the training process ended before the condition held"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_exact_resume_after_sigkill(smollm: LlamaWeights, tmp_path: Path) -> None:
    hyper = {
        "max_steps": 8,
        "checkpoint_every": 4,
        "learning_rate": 3e-3,
        "seed": 7,
        "batch_size": 1,
        "threads": 1,
    }
    a = write_job(tmp_path / "a", "smollm2-135m-instruct", **hyper)
    b = write_job(tmp_path / "b", "smollm2-135m-instruct", **hyper)
    # A runs uninterrupted alongside B (one thread each: the same arithmetic either way).
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    uninterrupted = subprocess.Popen(train_command(a), **quiet)
    try:
        proc = subprocess.Popen(train_command(b), **quiet)
        try:
            wait_until(
                lambda: (
                    any(e["type"] == "checkpoint" and e["step"] == 4 for e in events(b))
                    and max(step_losses(b), default=0) >= 5
                ),
                proc,
            )
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert max(step_losses(b)) < 8
        assert subprocess.run(train_command(b), capture_output=True).returncode == 0
        assert uninterrupted.wait(timeout=300) == 0
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()

    assert step_losses(b) == step_losses(a)
    assert list(step_losses(a)) == list(range(1, 9))
    assert step_losses(a)[8] < step_losses(a)[1]  # and it learns
    result_a = json.loads((a / "result.json").read_text())
    result_b = json.loads((b / "result.json").read_text())
    assert result_b["status"] == "succeeded" and result_b["steps"] == 8
    assert result_b["checkpoints"] == result_a["checkpoints"]
    seqs = [e["seq"] for e in events(b)]
    assert seqs == list(range(1, len(seqs) + 1))
    statuses = [e["status"] for e in events(b) if e["type"] == "status"]
    assert statuses == ["running", "running", "succeeded"]
    final = read_adapter_dir(b / "exports" / "step-000008")[0]
    assert final["adapter_digest"] == result_a["checkpoints"][-1]["digest"]


# peft calls a transformers method that transformers 5 deprecates.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_export_loads_in_hugging_face_peft(smollm: LlamaWeights, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    spec = LoraSpec(r=4, alpha=8, targets=("q", "k", "v", "o", "mlp"))
    model = build_model(smollm, torch.device("cpu"), Precision.FP32)
    attach_lora(model, spec, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in adapter_state(model).items():
            if key.endswith("lora_B"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    meta = {"base_model": "smollm2-135m-instruct", "base_digest": None, "step": 1}
    write_adapter_dir(tmp_path / "export", model, spec, meta)

    hf = peft.PeftModel.from_pretrained(hf_llama(smollm, torch.float32), tmp_path / "export")
    tok = smollm.tokenizer
    prompt = tok.encode(tok.render_chat([{"role": "user", "content": "Name a colour."}]))
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        theirs = hf(tokens).logits[0]
        ours = model.output(model.hidden_states(tokens))[0]
        base = hf.get_base_model()
        with hf.disable_adapter():
            plain = base(tokens).logits[0]
    assert (ours - plain).abs().max() > 0.1  # the adapter changes the outputs
    assert torch.allclose(ours, theirs, atol=2e-3, rtol=1e-4)


@pytest.fixture(scope="session")
def tiny_base(smollm: LlamaWeights, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer, 32-wide random llama folder with SmolLM2's tokenizer and chat template:
    the job machinery at a fraction of a second per step."""
    from safetensors.torch import save_file

    from psionic.model import Transformer
    from psionic.weights import to_hf_state_dict

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = smollm.args.vocab_size
    config = {
        "model_type": "llama",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "bos_token_id": smollm.tokenizer.bos_id,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    template = {"chat_template": smollm.tokenizer.chat_template}
    (folder / "tokenizer_config.json").write_text(json.dumps(template))
    smollm.tokenizer.tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    args = LlamaArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab, ffn_dim=64)
    state = {k: v * 0.5 for k, v in Transformer(args).state_dict().items() if "rope" not in k}
    unfused = {}
    for key, value in state.items():
        if ".wqkv." in key:
            q, k, v = value.split([32, 16, 16])
            for name, part in (("wq", q), ("wk", k), ("wv", v)):
                unfused[key.replace("wqkv", name)] = part
        elif ".w13." in key:
            for name, part in zip(("w1", "w3"), value.split(64), strict=True):
                unfused[key.replace("w13", name)] = part
        else:
            unfused[key] = value
    save_file(
        {k: v.contiguous() for k, v in to_hf_state_dict(unfused).items()},
        str(folder / "model.safetensors"),
    )
    return folder


@pytest.fixture
def restore_torch_settings() -> Iterator[None]:
    """run_job sets process-wide torch settings (threads, deterministic algorithms)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_sigterm_cancels_at_a_step_boundary(tiny_base: Path, tmp_path: Path) -> None:
    job = write_job(tmp_path / "j", str(tiny_base), max_steps=100000, checkpoint_every=100000)
    proc = subprocess.Popen(
        train_command(job), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: max(step_losses(job), default=0) >= 2, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last = events(job)[-1]
    assert last["type"] == "status" and last["status"] == "cancelled"
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "cancelled" and 2 <= result["steps"] < 100000


def test_failed_checkpoint_write_keeps_the_previous_one(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_torch_settings: None
) -> None:
    job = write_job(
        tmp_path / "j", str(tiny_base), max_steps=6, checkpoint_every=2, keep_checkpoints=2
    )
    real = checkpoints.write_synced

    def disk_fills_at_step_4(path: Path, data: bytes) -> None:
        if ".step-000004.tmp" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoints, "write_synced", disk_fills_at_step_4)
    assert run_job(job) == 1
    last = events(job)[-1]
    assert last["status"] == "failed"
    assert last["error"]["code"] == "checkpoint_write_failed"
    assert "step 4" in last["error"]["message"]
    assert [p.name for p in (job / "checkpoints").iterdir()] == ["step-000002"]
    kept = checkpoints.latest(job / "checkpoints")
    assert kept is not None and kept.step == 2

    # Space freed: the job resumes from step 2 and finishes; a corrupt newer checkpoint is
    # passed over like a missing one.
    monkeypatch.setattr(checkpoints, "write_synced", real)
    assert run_job(job) == 0
    assert sorted(step_losses(job)) == [1, 2, 3, 4, 5, 6]
    steps = [e["step"] for e in events(job) if e["type"] == "step"]
    assert steps == [1, 2, 3, 4, 3, 4, 5, 6]
    kept_dirs = sorted(p.name for p in (job / "checkpoints").iterdir())
    assert kept_dirs == ["step-000004", "step-000006"]  # keep_checkpoints=2
    (job / "checkpoints" / "step-000006" / "trainer.pt").write_bytes(b"torn")
    latest = checkpoints.latest(job / "checkpoints")
    assert latest is not None and latest.step == 4


def test_loss_decreases_and_bad_jobs_fail_clearly(
    tiny_base: Path, tmp_path: Path, restore_torch_settings: None
) -> None:
    job = write_job(
        tmp_path / "j",
        str(tiny_base),
        holdout=True,
        max_steps=20,
        checkpoint_every=10,
        learning_rate=5e-2,
        targets=["q", "k", "v", "o", "mlp", "head"],
        eval_max_tokens=4,
    )
    assert run_job(job) == 0
    losses = step_losses(job)
    assert len(losses) == 20
    assert sum(list(losses.values())[-4:]) < 0.8 * sum(list(losses.values())[:4])
    result = json.loads((job / "result.json").read_text())
    assert result["base_eval"]["n"] == 1 and result["base_eval"]["pass_rate"] in (0.0, 1.0)
    assert [c["step"] for c in result["checkpoints"]] == [10, 20]
    assert result["checkpoints"][-1]["eval"]["loss"] < result["base_eval"]["loss"]
    assert (job / "exports" / "step-000010" / "adapter_config.json").exists()
    saved = [e for e in events(job) if e["type"] == "checkpoint"]
    assert saved[-1]["validation_loss"] < saved[0]["validation_loss"]

    bad = write_job(tmp_path / "bad", str(tiny_base), schedule="sideways")
    assert run_job(bad) == 1
    assert events(bad)[-1]["error"]["code"] == "invalid_job"
    empty = write_job(tmp_path / "empty", str(tiny_base))
    (empty / "train.jsonl").write_text("{oops\n")
    assert run_job(empty) == 1
    error = events(empty)[-1]["error"]
    assert error["code"] == "invalid_training_file" and "line 1" in error["message"]


def test_head_only_trains_the_output_head(
    tiny_base: Path, tmp_path: Path, restore_torch_settings: None
) -> None:
    job = write_job(
        tmp_path / "j",
        str(tiny_base),
        mode="head_only",
        max_steps=20,
        checkpoint_every=20,
        learning_rate=5e-2,
    )
    assert run_job(job) == 0
    losses = list(step_losses(job).values())
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])
    meta, state = read_adapter_dir(job / "exports" / "step-000020")
    assert meta["spec"]["targets"] == ["head"]
    assert set(state) == {"output.lora.lora_A", "output.lora.lora_B"}


def test_schedules() -> None:
    assert [schedule_factor(s, 10, 2, "constant") for s in (0, 1, 2, 9)] == [0.5, 1, 1, 1]
    assert schedule_factor(2, 10, 2, "linear") == 1 and schedule_factor(6, 10, 2, "linear") == 0.5
    assert schedule_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert schedule_factor(9, 10, 0, "cosine") == pytest.approx(0.0245, abs=1e-3)


def test_progress_continues_after_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    path.write_text('{"seq": 1, "ts": 0, "type": "status", "status": "running"}\n{"seq": 2, "ty')
    progress = Progress(path)
    progress.emit("step", step=1)
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["seq"] == 2 and len(lines) == 3
    assert Progress(path).seq == 2


def test_grad_accumulation_equals_the_large_batch(
    tiny_base: Path, tmp_path: Path, restore_torch_settings: None
) -> None:
    common = {"max_steps": 3, "checkpoint_every": 3, "learning_rate": 1e-2}
    big = write_job(tmp_path / "big", str(tiny_base), batch_size=4, **common)
    small = write_job(tmp_path / "small", str(tiny_base), batch_size=2, grad_accum=2, **common)
    assert run_job(big) == 0 and run_job(small) == 0
    a, b = step_losses(big), step_losses(small)
    assert list(a) == [1, 2, 3]
    assert all(abs(a[s] - b[s]) < 1e-5 * a[s] for s in a)
    state_a = read_adapter_dir(big / "exports" / "step-000003")[1]
    state_b = read_adapter_dir(small / "exports" / "step-000003")[1]
    assert all(torch.allclose(state_a[k], state_b[k], atol=1e-5) for k in state_a)


def test_bf16_autocast_trains(
    tiny_base: Path, tmp_path: Path, restore_torch_settings: None
) -> None:
    job = write_job(tmp_path / "j", str(tiny_base), precision="bf16", max_steps=3)
    assert run_job(job) == 0
    assert all(math.isfinite(loss) for loss in step_losses(job).values())
    assert len(step_losses(job)) == 3
