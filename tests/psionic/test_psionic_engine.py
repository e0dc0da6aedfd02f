"""Engine pieces on the real SmolLM2 weights: tokenizer, template, sampling, stops, cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from psionic import weights as weights_module
from psionic.engine import Engine, Finished, TextDelta, _held_back
from psionic.precision import Precision
from psionic.registry import smollm2_gguf
from psionic.sampling import Sampler, SamplingParams
from psionic.tokenizer import StreamDecoder
from psionic.weights import LlamaWeights, load_gguf

MESSAGES = [{"role": "user", "content": "Tell me a story."}]


def test_tokenizer_round_trip_and_special_tokens(smollm: LlamaWeights) -> None:
    tok = smollm.tokenizer
    text = "Héllo wörld 12345 — naïve café 🚀\n\tend"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("12") == [tok.tokenizer.token_to_id("1"), tok.tokenizer.token_to_id("2")]
    rendered = tok.render_chat(MESSAGES)
    assert rendered.startswith("<|im_start|>system\n")
    assert rendered.endswith("<|im_start|>assistant\n")
    ids = tok.encode(rendered)
    assert ids.count(tok.tokenizer.token_to_id("<|im_start|>")) == 3
    assert tok.tokenizer.token_to_id("<|im_end|>") in tok.stop_ids


def test_stream_decoder_never_splits_characters(smollm: LlamaWeights) -> None:
    tok = smollm.tokenizer
    text = "emoji 🚀🚀 and ünïcödé"
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in tok.encode(text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_held_back_suffix() -> None:
    assert _held_back("hello wor", ["world"]) == 3
    assert _held_back("hello", ["xyz"]) == 0
    assert _held_back("ab", ["abc", "b"]) == 2


def test_sampling_seed_top_k_and_budget(chat_engine: Any) -> None:
    engine: Engine = chat_engine
    prompt = engine.tokenizer.encode(engine.tokenizer.render_chat(MESSAGES))

    def run(**kw: Any) -> list[int]:
        params = SamplingParams(**kw)
        return list(engine.generate_ids(prompt, 8, Sampler(params, engine.device)))

    seeded = run(temperature=0.9, top_p=0.9, seed=7)
    assert seeded == run(temperature=0.9, top_p=0.9, seed=7)
    assert run(temperature=0) == run(temperature=1.0, top_k=1, seed=3)
    assert len(run(temperature=0)) == 8


def test_complete_reports_stop_length_and_cancel(chat_engine: Any) -> None:
    engine: Engine = chat_engine
    prompt = engine.tokenizer.encode(
        engine.tokenizer.render_chat([{"role": "user", "content": "What is 2+2?"}])
    )
    events = list(engine.complete(prompt, SamplingParams(max_tokens=64, temperature=0)))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "stop"
    assert finished.prompt_tokens == len(prompt)
    short = list(engine.complete(prompt, SamplingParams(max_tokens=2, temperature=0)))
    assert short[-1] == Finished("length", len(prompt), 2)
    calls = iter([False, False, True])
    cancelled = list(
        engine.complete(
            prompt, SamplingParams(max_tokens=64, temperature=0), lambda: next(calls, True)
        )
    )
    assert cancelled[-1].reason == "cancelled"  # type: ignore[union-attr]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "4" in text


def test_gguf_conversion_is_cached_by_digest(
    psionic_cache: Path, smollm: LlamaWeights, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_conversion(path: Path) -> Any:
        raise AssertionError("converted again")

    monkeypatch.setattr(weights_module, "_convert_gguf", no_conversion)
    started = time.monotonic()
    again = load_gguf(smollm2_gguf(), psionic_cache)
    assert time.monotonic() - started < 30
    assert len(list(psionic_cache.iterdir())) >= 1
    assert torch.equal(
        again.state_dict["layers.0.attention.wq.weight"],
        smollm.state_dict["layers.0.attention.wq.weight"],
    )


def test_hf_safetensors_folder_loads_the_same_model(smollm: LlamaWeights, tmp_path: Path) -> None:
    import json

    from safetensors.torch import save_file

    from psionic.weights import load_hf_folder, to_hf_state_dict

    a = smollm.args
    state = {k: v.contiguous() for k, v in to_hf_state_dict(smollm.state_dict).items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    config = {
        "model_type": "llama",
        "hidden_size": a.dim,
        "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "vocab_size": a.vocab_size,
        "intermediate_size": a.ffn_dim,
        "rms_norm_eps": a.norm_eps,
        "rope_theta": a.rope_theta,
        "max_position_embeddings": a.max_seq_len,
        "tie_word_embeddings": a.tie_embeddings,
        "bos_token_id": 1,
        "eos_token_id": [2],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    smollm.tokenizer.tokenizer.save(str(tmp_path / "tokenizer.json"))
    template = {"chat_template": smollm.tokenizer.chat_template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(template))
    loaded = load_hf_folder(tmp_path)
    assert loaded.args == a
    assert loaded.tokenizer.stop_ids == smollm.tokenizer.stop_ids
    prompt = loaded.tokenizer.encode(loaded.tokenizer.render_chat(MESSAGES))
    assert prompt == smollm.tokenizer.encode(smollm.tokenizer.render_chat(MESSAGES))
    greedy = SamplingParams(temperature=0)
    runs = []
    for weights in (smollm, loaded):
        engine = Engine(weights, torch.device("cpu"), Precision.FP32)
        runs.append(list(engine.generate_ids(prompt, 4, Sampler(greedy, engine.device))))
    assert runs[0] == runs[1]
