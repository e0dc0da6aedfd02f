"""First run ("set up your rig"): the backup of the wallet's words, and restoring from them.

A home's seed is created at its first start (it is the Nostr identity too), but a daemon whose
owner has neither confirmed a backup of those words nor chosen where its money lives (a
network profile or a wallet network) *needs setup*: an explicit state, not an error. The
first-run steps (commands/setup.py) reveal the words once, check two of them, or replace the
new, never-used seed with the owner's own words; then a profile is chosen and the daemon
restarts into it.

Files, next to the seed in `data/wallet/` (private like it):
- `backup-confirmed`: written once two words were confirmed (or the words were restored).
- `wallet.mnemonic.unused-<time>`: a never-used seed that restoring replaced; never deleted.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from autopilotd.config import Config
from autopilotd.errors import UserError
from autopilotd.paths import private_dir, write_private_atomic
from autopilotd.wallet.seed import read_seed, seed_path, validate_mnemonic, write_seed_exclusive

BACKUP_MARKER = "backup-confirmed"
NODE_DIR = "ldk"  # the Lightning node's storage: once it exists, the seed holds money's keys


def backup_marker(data_dir: Path) -> Path:
    return seed_path(data_dir).parent / BACKUP_MARKER


def backed_up(data_dir: Path) -> bool:
    return backup_marker(data_dir).exists()


def mark_backed_up(data_dir: Path, how: str) -> None:
    private_dir(backup_marker(data_dir).parent)
    write_private_atomic(backup_marker(data_dir), f"{how} {time.time():.0f}\n".encode())


def restored_at(data_dir: Path) -> float | None:
    """When this home's words were restored from the owner's (not made here), else None."""
    try:
        how, _, at = backup_marker(data_dir).read_text().partition(" ")
    except OSError:
        return None
    if how != "restored":
        return None
    try:
        return float(at)
    except ValueError:
        return 0.0


def needs_setup(config: Config) -> bool:
    """No network chosen for the wallet and no backup of its words confirmed: a first run."""
    return (
        config.wallet_network == "off"
        and not config.network_profile
        and not backed_up(config.paths.data_dir)
    )


def pick_positions(words: int) -> tuple[int, int]:
    """Two different word positions (1-based, in order) for the owner to confirm."""
    first = secrets.randbelow(words) + 1
    second = secrets.randbelow(words - 1) + 1
    if second >= first:
        second += 1
    low, high = sorted((first, second))
    return low, high


def check_words(data_dir: Path, positions: tuple[int, int], given: tuple[str, str]) -> None:
    """The given words are the seed's at those positions, or UserError (nothing is marked)."""
    words = read_seed(seed_path(data_dir)).split()
    for position, word in zip(positions, given, strict=True):
        if word.strip().lower() != words[position - 1]:
            raise UserError(
                f"word {position} does not match; look at your written copy and try again"
            )


def replace_unused_seed(data_dir: Path, words: str) -> Path:
    """Install the owner's words instead of this home's new seed, if that seed never held money.

    Refuses once the Lightning node has run on the current seed (its keys may hold funds or
    channels) or a backup of it was confirmed (the owner chose to keep it). The replaced seed
    is kept aside, never deleted.
    """
    mnemonic = validate_mnemonic(words)
    path = seed_path(data_dir)
    if (path.parent / NODE_DIR).exists():
        raise UserError(
            "this wallet has already run, so its words are never replaced here; restore into "
            "a new home instead (autopilotd run --home DIR)"
        )
    if backed_up(data_dir):
        raise UserError("this wallet's words were already backed up and kept; nothing replaced")
    if path.exists():
        if read_seed(path) == mnemonic:
            mark_backed_up(data_dir, "restored")
            return path
        path.rename(path.with_name(f"{path.name}.unused-{time.time():.0f}"))
    write_seed_exclusive(path, mnemonic)
    mark_backed_up(data_dir, "restored")
    return path
