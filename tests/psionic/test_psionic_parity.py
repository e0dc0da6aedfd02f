"""Oracles: greedy decoding token-identical to transformers, embeddings equal to
sentence-transformers, both on the very same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DEVICES

from psionic.embeddings import Embedder
from psionic.engine import Engine
from psionic.precision import Precision
from psionic.reference import hf_llama
from psionic.sampling import Sampler, SamplingParams
from psionic.weights import LlamaWeights

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue? Count 1 2 3."},
    ],
]
NEW_TOKENS = 24


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16])
def test_greedy_matches_transformers(
    smollm: LlamaWeights, device: str, precision: Precision
) -> None:
    dtype = precision.activation_dtype(torch.device(device))
    pytest.importorskip("transformers")
    hf = hf_llama(smollm, dtype, device)
    engine = Engine(smollm, torch.device(device), precision)
    for messages in PROMPTS:
        prompt = smollm.tokenizer.encode(smollm.tokenizer.render_chat(messages))
        ours = list(
            engine.generate_ids(
                prompt, NEW_TOKENS, Sampler(SamplingParams(temperature=0), engine.device)
            )
        )
        with torch.inference_mode():
            out = hf.generate(
                torch.tensor([prompt], device=device),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        theirs = out[0, len(prompt) :].tolist()
        assert ours == theirs, (messages, smollm.tokenizer.decode(ours))


def test_int8_agrees_with_fp32_on_first_tokens(smollm: LlamaWeights) -> None:
    prompt = smollm.tokenizer.encode(smollm.tokenizer.render_chat(PROMPTS[0]))
    greedy = SamplingParams(temperature=0)
    runs = []
    for precision in (Precision.FP32, Precision.INT8):
        engine = Engine(smollm, torch.device("cpu"), precision)
        runs.append(list(engine.generate_ids(prompt, 6, Sampler(greedy, engine.device))))
    assert runs[0] == runs[1]


TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. " * 4,
    "a",
    "Nostr relays carry NIP-90 job requests; providers answer them for sats.",
    "",
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("precision", "floor"),
    [(Precision.FP32, 0.9999), (Precision.BF16, 0.999), (Precision.INT8, 0.995)],
)
def test_embeddings_match_sentence_transformers(
    minilm_dir: Path, device: str, precision: Precision, floor: float
) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = torch.tensor(st.SentenceTransformer(str(minilm_dir), device=device).encode(TEXTS))
    embedder = Embedder(minilm_dir, torch.device(device), precision, batch_size=2)
    ours = torch.tensor(embedder.embed(TEXTS).vectors)
    cosine = torch.nn.functional.cosine_similarity(ours, reference.cpu())
    assert cosine.min().item() >= floor
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-4)
