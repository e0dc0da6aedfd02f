"""The local runtime service: supervise a psionic process (or watch a configured URL).

It keeps the snapshot's `local_runtime` section true: state, models, device, dtype, queue and
the last error, read from psionic's status every `POLL_S` (a new snapshot only when something
changed). A psionic that exits is restarted a few times with growing pauses, then left in
`error` with its exit code and the tail of its output, so a broken runtime is visible instead
of being restarted forever.

It is also the `Inference` the provider gets: requests go to the runtime only while it is
ready, and fail with the runtime's state in words otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from autopilotd.children import die_with_parent
from autopilotd.loopback import free_port
from autopilotd.ports.inference import (
    ChatChunk,
    ChatModelState,
    Completion,
    InferenceClient,
    InferenceError,
    RuntimeStatus,
)
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.sections import LocalRuntimeSection, ModelView, RuntimeState
from autopilotd.runtime.state import SectionWriter

logger = logging.getLogger(__name__)

POLL_S = 2.0
START_TIMEOUT_S = 300.0
MAX_RESTARTS = 3
# psionic decodes this many chat completions together at least; more when the provider runs
# more jobs at once (provider_max_inflight, as it is when psionic starts).
MIN_BATCH_SLOTS = 8


def chat_model_path(setting: str) -> Path | None:
    """The local model file or folder `chat_model` names, or None when it is a model id."""
    return Path(setting).expanduser() if "/" in setting or setting.endswith(".gguf") else None


def chat_model_id(setting: str) -> str:
    """The id psionic serves the `chat_model` setting under ("" for its first chat model)."""
    path = chat_model_path(setting)
    return "local-" + path.stem.lower() if path is not None else setting


def psionic_command() -> list[str]:
    beside = Path(sys.executable).parent / "psionic"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "psionic.cli"]


ClientFactory = Callable[[str], InferenceClient]
"""Makes the client of the runtime at a URL (the psionic adapter; a fake in fast tests)."""


class LocalRuntime:
    """The runtime's client and state; see the module docstring."""

    name = "local_runtime"

    def __init__(
        self,
        *,
        config: LiveConfig,
        writer: SectionWriter[LocalRuntimeSection],
        client_factory: ClientFactory,
    ) -> None:
        self._config = config
        self._writer = writer
        self._client_factory = client_factory
        self.client: InferenceClient | None = None
        self._output: deque[str] = deque(maxlen=40)

    def section(self) -> LocalRuntimeSection:
        return self._writer.current

    def publish(self, **changes: object) -> None:
        self._writer.set(**changes)

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

    def require(self) -> InferenceClient:
        if self.client is None or self.section().state is not RuntimeState.READY:
            section = self.section()
            raise InferenceError(f"the local runtime is {section.state.value}: {section.reason}")
        return self.client

    # -- Inference (the provider's port) ---------------------------------------------------

    async def status(self) -> RuntimeStatus:
        return await self.require().status()

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        model: str | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None = None,
    ) -> Completion:
        return await self.require().chat(
            messages,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )

    async def embed(self, texts: list[str], *, model: str | None) -> list[list[float]]:
        return await self.require().embed(texts, model=model)

    def chat_model(self) -> ChatModelState:
        """The chat model set by `chat_model` (else the first warm one) and whether it is
        ready, from the snapshot."""
        section = self.section()
        wanted = chat_model_id(self._config.current.chat_model)
        chats = [m for m in section.models if m.kind == "chat"]
        found = next((m for m in chats if m.id == wanted or not wanted), None)
        if section.state is not RuntimeState.READY:
            return ChatModelState(
                False,
                wanted or None,
                f"the local runtime is {section.state.value}: {section.reason}",
            )
        if found is None:
            served = ", ".join(m.id for m in chats) or "none"
            return ChatModelState(
                False, wanted or None, f"psionic serves no chat model {wanted!r} (it has {served})"
            )
        if not found.warm:
            return ChatModelState(False, found.id, f"the chat model {found.id} is not loaded")
        return ChatModelState(True, found.id, "ready")

    def stream_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        model: str | None,
        tools: Sequence[dict[str, Any]],
        tool_choice: Any,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
    ) -> AsyncIterator[ChatChunk]:
        return self.require().stream_chat(
            messages,
            model=model,
            tools=tools,
            tool_choice=tool_choice,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
        )

    async def warm(self, model: str) -> None:
        await self._running().warm(model)

    async def unload(self, model: str) -> None:
        await self._running().unload(model)

    def _running(self) -> InferenceClient:
        if self.client is None:
            raise InferenceError(f"the local runtime is {self.section().state.value}")
        return self.client

    # -- supervision -------------------------------------------------------------------------

    async def run(self, ready: Callable[[], None]) -> None:
        cfg = self._config.current
        if cfg.runtime_mode == "url":
            client = self._client_factory(cfg.runtime_url)
            self.client = client
            self.publish(
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
                self.publish(
                    state=RuntimeState.ERROR,
                    reason=f"psionic exited {restarts} times (last exit code {code})",
                    next_step="see runtime.status and the logs, then restart autopilotd",
                    last_error=" | ".join(list(self._output)[-5:]) or None,
                )
                await asyncio.Event().wait()
            pause = min(30.0, 2.0**restarts)
            self.publish(
                state=RuntimeState.ERROR,
                reason=f"psionic exited (code {code}); restarting in {pause:.0f} s",
                next_step=None,
                last_error=" | ".join(list(self._output)[-5:]) or None,
            )
            await asyncio.sleep(pause)

    async def _run_once(self) -> int:
        cfg = self._config.current
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
        if "--batch-slots" not in cmd:  # the jobs run at once decode in one batch
            cmd += ["--batch-slots", str(max(MIN_BATCH_SLOTS, cfg.provider_max_inflight))]
        path = chat_model_path(cfg.chat_model)
        if path is not None:  # a bigger local model for chat, beside the packaged ones
            cmd += ["--model", f"{chat_model_id(cfg.chat_model)}={path}"]
        self.publish(
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
        client = self._client_factory(url)
        self.client = client
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._drain(proc))
                watcher = tg.create_task(self._watch(client, proc))
                code = await proc.wait()
                watcher.cancel()
            return code
        finally:
            self.client = None
            await client.close()
            if proc.returncode is None:
                await _terminate(proc)

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            logger.debug("psionic: %s", line)

    async def _watch(
        self, client: InferenceClient, proc: asyncio.subprocess.Process | None
    ) -> None:
        started = time.monotonic()
        seen_healthy = False
        while True:
            try:
                status = await client.status()
            except InferenceError as exc:
                if seen_healthy:
                    self.publish(
                        state=RuntimeState.DEGRADED,
                        reason=exc.reason,
                        next_step="wait; psionic may be busy or restarting",
                    )
                elif time.monotonic() - started > START_TIMEOUT_S:
                    self.publish(
                        state=RuntimeState.ERROR,
                        reason="psionic did not come up in time",
                        next_step="see the session log",
                    )
            else:
                seen_healthy = True
                self.publish_status(status)
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
