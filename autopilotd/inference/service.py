"""The local runtime service: supervise a psionic process (or watch a configured URL).

It keeps the snapshot's `local_runtime` section true: state, models, device, dtype, queue and
the last error, polled from psionic's /health. A psionic that exits is restarted a few times
with growing pauses, then left in `error` with its exit code and the tail of its output, so a
broken runtime is visible instead of being restarted forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from autopilotd.children import die_with_parent
from autopilotd.inference.port import Inference, InferenceError, RuntimeStatus
from autopilotd.inference.psionic_http import PsionicClient
from autopilotd.loopback import free_port
from autopilotd.runtime.context import Runtime
from autopilotd.runtime.snapshot import LocalRuntimeSection, ModelView, RuntimeState

logger = logging.getLogger(__name__)

POLL_S = 2.0
START_TIMEOUT_S = 300.0
MAX_RESTARTS = 3


def psionic_command() -> list[str]:
    beside = Path(sys.executable).parent / "psionic"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "psionic.cli"]


class LocalRuntime:
    """Holds the inference client the job flow uses, and publishes the runtime's state."""

    def __init__(self, rt: Runtime, client: Inference | None = None) -> None:
        self.rt = rt
        self.client: Inference | None = client

    def section(self) -> LocalRuntimeSection:
        return self.rt.state.current.local_runtime

    def publish(self, **changes: object) -> None:
        old = self.section()
        new = dataclasses.replace(old, updated_at=time.time(), **changes)  # type: ignore[arg-type]
        if dataclasses.replace(new, updated_at=old.updated_at) != old:
            self.rt.state.replace(local_runtime=new)
            if new.state is not old.state:
                self.rt.events.publish(
                    "runtime.state_changed", state=new.state.value, reason=new.reason
                )

    def publish_status(self, status: RuntimeStatus) -> None:
        models = tuple(ModelView(m.id, m.kind, m.warm) for m in status.models)
        loading = any(m.state == "loading" for m in status.models)
        if status.ready:
            state, reason, step = RuntimeState.READY, "ready to run jobs", None
        elif loading:
            state, reason, step = RuntimeState.STARTING, "loading models", None
        elif status.models:
            state = RuntimeState.DEGRADED
            reason = status.last_error or "psionic runs but no model is warm"
            step = "warm a model: autopilotctl runtime.warm --model ID"
        else:
            state, reason = RuntimeState.DEGRADED, "psionic has no models"
            step = "check psionic's model packages (see docs/psionic.md)"
        self.publish(
            state=state,
            reason=reason,
            next_step=step,
            device=status.device,
            dtype=status.dtype,
            models=models,
            queue_depth=status.queue_depth,
            last_error=status.last_error,
        )

    def require(self) -> Inference:
        if self.client is None or self.section().state is not RuntimeState.READY:
            section = self.section()
            raise InferenceError(f"the local runtime is {section.state.value}: {section.reason}")
        return self.client


class LocalRuntimeService:
    name = "local_runtime"

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime
        self._output: deque[str] = deque(maxlen=40)

    async def run(self, ready: Callable[[], None]) -> None:
        cfg = self.runtime.rt.config
        if cfg.runtime_mode == "url":
            client = PsionicClient(cfg.runtime_url)
            self.runtime.client = client
            self.runtime.publish(
                state=RuntimeState.STARTING, reason="connecting", url=cfg.runtime_url, managed=False
            )
            ready()
            try:
                await self._watch(client, None)
            finally:
                await client.close()
            return
        restarts = 0
        ready()
        while True:
            code = await self._run_once()
            restarts += 1
            if restarts > MAX_RESTARTS:
                self.runtime.publish(
                    state=RuntimeState.ERROR,
                    reason=f"psionic exited {restarts} times (last exit code {code})",
                    next_step="see runtime.status and the logs, then restart autopilotd",
                    last_error=" | ".join(list(self._output)[-5:]) or None,
                )
                await asyncio.Event().wait()
            pause = min(30.0, 2.0**restarts)
            self.runtime.publish(
                state=RuntimeState.ERROR,
                reason=f"psionic exited (code {code}); restarting in {pause:.0f} s",
                next_step=None,
                last_error=" | ".join(list(self._output)[-5:]) or None,
            )
            await asyncio.sleep(pause)

    async def _run_once(self) -> int:
        cfg = self.runtime.rt.config
        port = cfg.runtime_port or free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            *psionic_command(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *shlex.split(cfg.runtime_args),
        ]
        self.runtime.publish(
            state=RuntimeState.STARTING,
            reason="starting psionic and loading models",
            url=url,
            managed=True,
            next_step=None,
        )
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # psionic runs in its own session: nothing else stops it
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        client = PsionicClient(url)
        self.runtime.client = client
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._drain(proc))
                watcher = tg.create_task(self._watch(client, proc))
                code = await proc.wait()
                watcher.cancel()
            return code
        finally:
            self.runtime.client = None
            await client.close()
            if proc.returncode is None:
                await _terminate(proc)

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            logger.debug("psionic: %s", line)

    async def _watch(self, client: PsionicClient, proc: asyncio.subprocess.Process | None) -> None:
        started = time.monotonic()
        seen_healthy = False
        while True:
            try:
                status = await client.status()
            except InferenceError as exc:
                if seen_healthy:
                    self.runtime.publish(
                        state=RuntimeState.DEGRADED,
                        reason=exc.reason,
                        next_step="wait; psionic may be busy or restarting",
                    )
                elif time.monotonic() - started > START_TIMEOUT_S:
                    self.runtime.publish(
                        state=RuntimeState.ERROR,
                        reason="psionic did not come up in time",
                        next_step="see the session log",
                    )
            else:
                seen_healthy = True
                self.runtime.publish_status(status)
            await asyncio.sleep(POLL_S)


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
