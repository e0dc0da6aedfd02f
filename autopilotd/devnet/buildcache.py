"""Where the project's native builds live (see scripts/build-btcd.sh).

The build scripts cache binaries outside the clone, under `AUTOPILOTD_BUILD_CACHE`
(default `~/.cache/autopilotd`); this module finds them there, so no machine-specific path
is ever written into the repository.
"""

import os
from pathlib import Path

BTCD_VERSION = "v0.26.2"


class BinaryNotFound(RuntimeError):
    """A native binary has not been built yet."""


def build_cache() -> Path:
    """The build cache directory, from the environment or the default."""
    configured = os.environ.get("AUTOPILOTD_BUILD_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "autopilotd"


def find_btcd_bin(name: str = "btcd") -> Path:
    """Path of `btcd` (or `btcctl`) built by scripts/build-btcd.sh at the pinned version."""
    root = build_cache() / "btcd"
    candidates = [root / "current" / "bin" / name]
    candidates += sorted(root.glob(f"btcd-{BTCD_VERSION}-*/bin/{name}"), reverse=True)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BinaryNotFound(f"{name} {BTCD_VERSION} not found under {root}: run scripts/build-btcd.sh")
