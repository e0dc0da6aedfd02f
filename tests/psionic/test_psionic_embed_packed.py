"""The packed encoder (real tokens only, padding confined to attention) equals the padded one."""

from __future__ import annotations

from pathlib import Path

import torch

from psionic.embeddings import Embedder
from psionic.precision import Precision

TEXTS = ["a", "Hello world", "The quick brown fox jumps over the lazy dog. " * 3, ""]


def test_packed_matches_padded_forward(minilm_dir: Path) -> None:
    embedder = Embedder(minilm_dir, torch.device("cpu"), Precision.FP32)
    ids = [e.ids for e in embedder.tokenizer.encode_batch(TEXTS)]
    width = max(len(seq) for seq in ids)
    padded = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros_like(padded)
    for row, seq in enumerate(ids):
        padded[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    with torch.inference_mode():
        reference = embedder.model(padded, mask)[mask.bool()]
        packed, owner = embedder.model.packed(ids)
        alone = [embedder.model.packed([seq])[0] for seq in ids]  # no padding: no mask
    assert owner.tolist() == [row for row, seq in enumerate(ids) for _ in seq]
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat(alone), reference, atol=1e-5, rtol=1e-4)


def test_embed_is_independent_of_batching(minilm_dir: Path) -> None:
    together = Embedder(minilm_dir, torch.device("cpu"), Precision.FP32, batch_size=8)
    one_by_one = Embedder(minilm_dir, torch.device("cpu"), Precision.FP32, batch_size=1)
    a = torch.tensor(together.embed(TEXTS).vectors)
    b = torch.tensor(one_by_one.embed(TEXTS).vectors)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
