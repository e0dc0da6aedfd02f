"""Run a blocking call off the event loop on a daemon thread.

`asyncio.to_thread` uses the loop's default executor, whose threads are joined when the loop
shuts down: a library call stuck on the network (ldk-node's start against an unreachable
chain source, say) would then hold the process forever after SIGTERM. For such calls this
helper starts a daemon thread instead, which cannot keep the process alive. Cancelling the
awaiting task abandons the call (the thread finishes or dies with the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_daemon_thread(fn: Callable[[], T], *, name: str = "blocking-call") -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: object) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            assert isinstance(value, BaseException)
            future.set_exception(value)

    def target() -> None:
        try:
            result: object = fn()
        except BaseException as exc:  # delivered to the awaiting task, not swallowed
            ok, result = False, exc
        else:
            ok = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for it any more
            loop.call_soon_threadsafe(deliver, ok, result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
