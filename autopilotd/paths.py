"""Where autopilotd keeps its files, and how they are created safely.

`Paths.for_home(dir)` puts config, data, runtime files and logs under one directory so several
daemons run side by side; `Paths.default()` follows the platform (XDG on Linux, the Library
folders on macOS).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from autopilotd.errors import StartupCheckFailed

APP = "autopilotd"
LOCK_WAIT_S = 2.0
"""How long a start waits for a home's lock before it says another daemon holds it: a child
that a stopped daemon's thread forked a moment before holds a copy of the lock until it execs."""


@dataclass(frozen=True)
class Paths:
    """The four directories of one daemon, plus the files named inside them."""

    home: Path | None
    config_dir: Path
    data_dir: Path
    runtime_dir: Path
    log_dir: Path

    @classmethod
    def for_home(cls, home: Path) -> Paths:
        home = home.expanduser().resolve()
        return cls(
            home=home,
            config_dir=home / "config",
            data_dir=home / "data",
            runtime_dir=home / "run",
            log_dir=home / "logs",
        )

    @classmethod
    def default(cls) -> Paths:
        runtime = os.environ.get("XDG_RUNTIME_DIR") if sys.platform.startswith("linux") else None
        return cls(
            home=None,
            config_dir=Path(platformdirs.user_config_dir(APP, appauthor=False)),
            data_dir=Path(platformdirs.user_data_dir(APP, appauthor=False)),
            runtime_dir=(
                Path(runtime) / APP
                if runtime
                else Path(platformdirs.user_state_dir(APP, appauthor=False)) / "run"
            ),
            log_dir=Path(platformdirs.user_log_dir(APP, appauthor=False)),
        )

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None) -> Paths:
        """`--home` wins, then `AUTOPILOTD_HOME`, then the platform defaults."""
        chosen = home if home is not None else os.environ.get("AUTOPILOTD_HOME")
        return cls.for_home(Path(chosen)) if chosen else cls.default()

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def manifest_file(self) -> Path:
        return self.runtime_dir / "autopilotd.json"

    @property
    def database_file(self) -> Path:
        return self.data_dir / "autopilotd.sqlite3"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / "autopilotd.lock"

    def display_home(self) -> str:
        return str(self.home) if self.home else str(self.data_dir)


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make sure the leaf is 0700, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` as 0600: temp file, fsync, rename, fsync the directory.

    Readers see either the old file or the whole new one, never a part, and the mode is 0600
    from the first byte (the temp file is created with O_EXCL and mode 0600 and then fchmod-ed,
    so the umask cannot widen it).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    tmp.replace(path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def owner_lock(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """One process owns a home's database at a time (RELIABILITY D3): a daemon, or a Nexus.

    A lock still held after `wait_s` belongs to another daemon; one held for less was a
    passing copy (a child between fork and exec)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StartupCheckFailed(
                        f"another autopilotd already runs with this home ({path.parent}); "
                        "stop it first, or use a different --home"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
