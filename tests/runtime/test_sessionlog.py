from __future__ import annotations

import json
import os
import time
from pathlib import Path

from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sessionlog import SessionLog


def test_jsonl_records_and_latest_link(tmp_path: Path) -> None:
    log = SessionLog(tmp_path, "s1", keep_sessions=5, keep_bytes=1 << 20)
    log.open()
    bus = EventBus(sink=log)
    bus.publish("provider.accepted", job_id="abc", request_id="r1")
    log.close()
    assert (tmp_path / "latest.jsonl").resolve() == (tmp_path / "sessions" / "s1.jsonl").resolve()
    record = json.loads((tmp_path / "latest.jsonl").read_text().splitlines()[0])
    assert record["domain_event"] == "provider.accepted"
    assert record["job_id"] == "abc" and record["request_id"] == "r1"
    assert {"ts", "level", "source", "message"} <= set(record)


def test_retention_by_count_and_size(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir(parents=True)
    for i in range(6):
        p = sessions / f"old{i}.jsonl"
        p.write_text("x" * 1000)
        os.utime(p, (time.time() - 100 + i, time.time() - 100 + i))
    log = SessionLog(tmp_path, "new", keep_sessions=3, keep_bytes=1 << 20)
    log.open()
    assert sorted(p.name for p in sessions.iterdir()) == ["new.jsonl", "old4.jsonl", "old5.jsonl"]
    log.close()
    log = SessionLog(tmp_path, "newer", keep_sessions=10, keep_bytes=1500)
    log.open()
    names = sorted(p.name for p in sessions.iterdir())
    assert "newer.jsonl" in names and "old4.jsonl" not in names
    assert sum(p.stat().st_size for p in sessions.iterdir()) <= 1500
    log.close()
