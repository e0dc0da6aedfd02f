"""The wallet's BIP-39 mnemonic: one per daemon home, created once, never overwritten.

The mnemonic is the single backup: the Lightning node's keys and (in the earn-loop issue) the
Nostr identity (NIP-06) both derive from it. Creation follows RELIABILITY S1: `O_CREAT|O_EXCL`
on a temporary name, mode 0600 in a 0700 directory, fsync of the file and its directory, then
a hard link to the final name, which fails rather than replace an existing seed. A crash at
any point leaves either no seed or a whole one, never a truncated or overwritten one.
"""

from __future__ import annotations

import os
from pathlib import Path

from embit import bip39

from autopilotd.crashpoints import crash_point
from autopilotd.errors import StartupCheckFailed, UserError
from autopilotd.paths import fsync_dir, private_dir

SEED_NAME = "wallet.mnemonic"


def _normalise(words: str) -> str:
    return " ".join(words.strip().lower().split())


def validate_mnemonic(words: str) -> str:
    mnemonic = _normalise(words)
    if len(mnemonic.split()) not in (12, 15, 18, 21, 24) or not bip39.mnemonic_is_valid(mnemonic):
        raise UserError("that is not a valid BIP-39 mnemonic (12 to 24 words with a checksum)")
    return mnemonic


def seed_path(data_dir: Path) -> Path:
    return data_dir / "wallet" / SEED_NAME


def write_seed_exclusive(path: Path, mnemonic: str) -> None:
    """Create the seed file; refuse if one exists. Durable before this returns."""
    private_dir(path.parent)
    if path.exists():
        raise UserError(f"a wallet seed already exists at {path}; it is never overwritten")
    for stale in path.parent.glob(f".{path.name}.*.new"):
        stale.unlink(missing_ok=True)  # left by a crash before the link: never the seed
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    data = (mnemonic + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        crash_point("seed.after_create")
        os.write(fd, data)
        crash_point("seed.after_write")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and fails if the seed appeared meanwhile
    except FileExistsError:
        raise UserError(
            f"a wallet seed already exists at {path}; it is never overwritten"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    crash_point("seed.after_link")
    fsync_dir(path.parent)


def load_or_create_seed(data_dir: Path) -> tuple[str, bool]:
    """Return (mnemonic, created): read the home's seed, or create a new one on first start."""
    path = seed_path(data_dir)
    if path.exists():
        return read_seed(path), False
    mnemonic = bip39.mnemonic_from_bytes(os.urandom(32))
    write_seed_exclusive(path, mnemonic)
    return mnemonic, True


def read_seed(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise StartupCheckFailed(
            f"the wallet seed {path} is readable by others (mode {mode:o}); "
            f"run 'chmod 600 {path}' and check who may have copied it"
        )
    text = path.read_text(encoding="utf-8")
    try:
        return validate_mnemonic(text)
    except UserError:
        raise StartupCheckFailed(
            f"the wallet seed {path} is damaged; restore it from your backup of the mnemonic"
        ) from None


def import_seed(data_dir: Path, words: str) -> Path:
    """Install an existing mnemonic as this home's seed (only before the first start)."""
    mnemonic = validate_mnemonic(words)
    path = seed_path(data_dir)
    write_seed_exclusive(path, mnemonic)
    return path
