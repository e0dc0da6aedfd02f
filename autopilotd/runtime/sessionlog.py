"""JSONL session logs: one file per daemon session, one JSON object per line.

`logs/sessions/<id>.jsonl` holds the session; `logs/latest.jsonl` is a symlink to the current
one. Every line has `ts`, `level`, `source`, `message`; domain events also carry
`domain_event` and their fields. Old sessions are pruned by count and total size.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from autopilotd.paths import private_dir
from autopilotd.runtime.events import Event


def new_session_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


class SessionLog:
    """The current session's log file, plus retention of older ones."""

    def __init__(self, log_dir: Path, session_id: str, keep_sessions: int, keep_bytes: int):
        self.log_dir = log_dir
        self.session_id = session_id
        self.sessions_dir = log_dir / "sessions"
        self.path = self.sessions_dir / f"{session_id}.jsonl"
        self.latest = log_dir / "latest.jsonl"
        self._keep_sessions = keep_sessions
        self._keep_bytes = keep_bytes
        self._file: IO[str] | None = None

    def open(self) -> None:
        private_dir(self.log_dir)
        private_dir(self.sessions_dir)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        tmp = self.log_dir / f".latest.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path("sessions") / self.path.name)
        tmp.replace(self.latest)
        self.prune()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")

    def write_event(self, event: Event) -> None:
        self.write(
            {
                "ts": event.ts,
                "level": "INFO",
                "source": "events",
                "message": event.name,
                "domain_event": event.name,
                "event_id": event.id,
                **event.fields,
            }
        )

    def tail(self, lines: int) -> list[dict[str, Any]]:
        """The last `lines` records of this session (oldest first)."""
        if not self.path.exists():
            return []
        kept: deque[str] = deque(maxlen=lines)
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                kept.append(line)
        out = []
        for line in kept:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def prune(self) -> None:
        """Remove the oldest sessions beyond the count and size limits (never the current)."""
        files = sorted(self.sessions_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        others = [p for p in files if p != self.path]
        total = sum(p.stat().st_size for p in files)
        while others and (len(others) + 1 > self._keep_sessions or total > self._keep_bytes):
            victim = others.pop(0)
            total -= victim.stat().st_size
            victim.unlink(missing_ok=True)

    def handler(self, level: int = logging.INFO) -> logging.Handler:
        return _SessionLogHandler(self, level)


class _SessionLogHandler(logging.Handler):
    def __init__(self, log: SessionLog, level: int) -> None:
        super().__init__(level)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry: dict[str, Any] = {
                "ts": record.created,
                "level": record.levelname,
                "source": record.name,
                "message": record.getMessage(),
            }
            if record.exc_info:
                entry["traceback"] = logging.Formatter().formatException(record.exc_info)
            self._log.write(entry)
        except Exception:  # a log line must never take the daemon down
            self.handleError(record)
