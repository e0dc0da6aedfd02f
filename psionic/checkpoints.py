"""Training checkpoints: written atomically, verified by digest, the newest N kept.

A checkpoint is a directory ``step-NNNNNN`` holding

- ``adapter/``: the adapter as a PEFT directory (psionic/lora.py), the bytes training exports;
- ``trainer.pt``: optimizer and scheduler state and the random number generators' states
  (torch CPU, CUDA when present, Python's ``random``), so training resumes exactly;
- ``state.json``: the step, the data position, the training loss;
- ``manifest.json``, written last: the sha256 of every other file.

It is written into ``.step-NNNNNN.tmp``, every file and the directory fsynced, then renamed
into place and the parent fsynced: after a crash or a failed write (disk full) a checkpoint
directory is either complete or absent, and the previous one is untouched. On load, a
directory whose manifest is missing or whose digests do not match is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from psionic.cache import file_digest
from psionic.lora import LoraSpec, fsync_dir, write_adapter_dir, write_synced

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """Every generator training draws from (dropout, data order uses its own seeds)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint on disk."""

    path: Path
    step: int
    state: dict[str, Any]

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    def trainer_state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = torch.load(self.path / "trainer.pt", weights_only=False)
        return loaded


def write_checkpoint(
    root: Path,
    step: int,
    adapter: dict[str, torch.Tensor],
    spec: LoraSpec,
    adapter_meta: dict[str, Any],
    trainer: dict[str, Any],
    state: dict[str, Any],
) -> Checkpoint:
    """Write checkpoint ``step`` under ``root`` atomically (see the module docstring).

    An OSError (ENOSPC, EIO) propagates after the temporary directory is removed; the
    checkpoints already there are left as they were.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f".{step_name(step)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write_adapter_dir(tmp / "adapter", adapter, spec, {**adapter_meta, "step": step})
        with (tmp / "trainer.pt").open("wb") as f:
            torch.save(trainer, f)
            f.flush()
            os.fsync(f.fileno())
        write_synced(tmp / "state.json", json.dumps({**state, "step": step}).encode())
        files = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json"]
        files += ["adapter/psionic_adapter.json", "trainer.pt", "state.json"]
        manifest = {"step": step, "files": {name: file_digest(tmp / name) for name in files}}
        write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
        fsync_dir(tmp)
        if final.exists():  # the same step written again after a resume
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Checkpoint(final, step, {**state, "step": step})


def verify(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path`` if its manifest is there and every digest matches."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        for name, digest in manifest["files"].items():
            if file_digest(path / name) != digest:
                logger.warning("checkpoint %s: %s does not match its digest", path, name)
                return None
        state = json.loads((path / "state.json").read_text())
        return Checkpoint(path, int(manifest["step"]), state)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("checkpoint %s is not usable: %s", path, exc)
        return None


def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first (temporaries excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def latest(root: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies, if any."""
    for path in reversed(checkpoint_dirs(root)):
        checkpoint = verify(path)
        if checkpoint is not None:
            return checkpoint
    return None


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and leftover temporaries."""
    for path in checkpoint_dirs(root)[: -max(1, keep)]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".step-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
