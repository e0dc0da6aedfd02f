from __future__ import annotations

import asyncio
import dataclasses

from autopilotd.runtime.events import EventBus
from autopilotd.runtime.sections import DaemonSection, ServiceState, ServiceStatus
from autopilotd.runtime.snapshot import Snapshot
from autopilotd.runtime.state import StateStore


def _snapshot() -> Snapshot:
    return Snapshot(seq=0, daemon=DaemonSection("0", 1, 100.0, "/h", "s"))


async def test_each_update_is_a_new_frozen_snapshot_with_seq_plus_one() -> None:
    store = StateStore(_snapshot())
    first = store.current
    seen: list[tuple[int, int]] = []
    store.subscribe(lambda old, new: seen.append((old.seq, new.seq)))
    status = ServiceStatus("x", ServiceState.RUNNING, 1.0)
    second = store.update(lambda s: dataclasses.replace(s, services=s.with_service(status)))
    assert (first.seq, second.seq) == (0, 1)
    assert first.services == ()
    assert seen == [(0, 1)]
    try:
        second.seq = 5  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("snapshots must be frozen")
    assert second.to_json(now=110.0)["daemon"]["uptime_s"] == 10.0


async def test_wait_for_change_wakes_and_times_out() -> None:
    store = StateStore(_snapshot())

    async def bump() -> None:
        await asyncio.sleep(0.05)
        store.replace()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(bump())
        snap = await store.wait_for_change(0, timeout=5)
    assert snap.seq == 1
    same = await store.wait_for_change(1, timeout=0.05)
    assert same.seq == 1


async def test_event_bus_long_poll_and_missed_window() -> None:
    bus = EventBus(keep=3)
    for i in range(5):
        bus.publish("x", i=i)
    events, missed = bus.since(0, 10)
    assert [e.id for e in events] == [3, 4, 5] and missed
    events, missed = bus.since(3, 10)
    assert [e.id for e in events] == [4, 5] and not missed
    events, _ = await bus.wait(5, timeout=0.05, limit=10)
    assert events == []
