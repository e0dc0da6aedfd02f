from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from autopilotd.blocking import in_daemon_thread


async def test_results_and_errors_come_back() -> None:
    assert await in_daemon_thread(lambda: 21 * 2) == 42

    def boom() -> int:
        raise ValueError("x")

    with pytest.raises(ValueError):
        await in_daemon_thread(boom)


def test_a_stuck_call_does_not_hold_the_process() -> None:
    code = (
        "import asyncio, time\n"
        "from autopilotd.blocking import in_daemon_thread\n"
        "async def main():\n"
        "    try:\n"
        "        async with asyncio.timeout(0.2):\n"
        "            await in_daemon_thread(lambda: time.sleep(3600))\n"
        "    except TimeoutError:\n"
        "        print('gave up')\n"
        "asyncio.run(main())\n"
    )
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "gave up"
    assert time.monotonic() - started < 30
    asyncio.get_event_loop_policy()
