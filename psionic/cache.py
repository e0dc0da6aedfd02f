"""Where converted weights live, and the digest that names them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import platformdirs

_CHUNK = 1 << 22


def cache_root() -> Path:
    """``$PSIONIC_CACHE`` if set, else the platform's user cache dir for psionic."""
    env = os.environ.get("PSIONIC_CACHE")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("psionic"))


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, hex: converted weights are keyed by it, not by its path."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
