"""A command that needs a service's running state waits while the service starts (sync.now,
turn.start, sandbox.start): it goes on once the service runs, and says which service is not
running when it does not start in time."""

from __future__ import annotations

import asyncio

import pytest

from autopilotd.errors import NotReady
from autopilotd.runtime import started
from autopilotd.runtime.started import Started


async def test_a_wait_goes_on_once_the_service_runs() -> None:
    gate = Started("the chat service")
    waiting = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    gate.set()
    await asyncio.wait_for(waiting, 5)
    await asyncio.wait_for(gate.wait(), 5)  # once running, at once


async def test_a_service_that_does_not_start_in_time_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(started, "START_WAIT_S", 0.01)
    gate = Started("the sandbox service")
    with pytest.raises(NotReady, match="the sandbox service is not running yet"):
        await gate.wait()
    gate.set()
    gate.clear()  # stopped: waiting again
    with pytest.raises(NotReady):
        await gate.wait()
