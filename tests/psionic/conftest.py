"""Fixtures for psionic: offline hubs, a per-session weight cache, models loaded once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psionic serve` does; before torch

torch = pytest.importorskip("torch")
# Two threads at most (CI runners have two cores); PSIONIC_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("PSIONIC_TEST_THREADS", min(2, os.cpu_count() or 1))))

from psionic.registry import minilm_folder, smollm2_gguf  # noqa: E402
from psionic.weights import LlamaWeights, load_gguf  # noqa: E402

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.fixture(scope="session")
def psionic_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Converted weights go to $PSIONIC_CACHE when set (to reuse them), else a temp dir."""
    preset = os.environ.get("PSIONIC_CACHE")
    path = Path(preset) if preset else tmp_path_factory.mktemp("psionic-cache")
    old = os.environ.get("PSIONIC_CACHE")
    os.environ["PSIONIC_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PSIONIC_CACHE", None)


@pytest.fixture(scope="session")
def smollm(psionic_cache: Path) -> LlamaWeights:
    return load_gguf(smollm2_gguf(), psionic_cache)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_folder()


@pytest.fixture(scope="session")
def chat_engine(smollm: LlamaWeights) -> object:
    from psionic.engine import Engine
    from psionic.precision import Precision

    return Engine(smollm, torch.device("cpu"), Precision.BF16)


@pytest.fixture(scope="session")
def embedder(minilm_dir: Path) -> object:
    from psionic.embeddings import Embedder
    from psionic.precision import Precision

    return Embedder(minilm_dir, torch.device("cpu"), Precision.FP32)
