"""The engine router: lines starting with `/` go to the command lane, words to a model engine.

A thread records one engine name (the model engine's), and every turn of it goes through the
router: a turn whose first non-blank line starts with `/` is the command lane's (`/run`,
`/patch`, `/buy`, … as docs/chat.md lists them), anything else is the model engine's (Codex
today, a local one later). `engine.status` is the model engine's, as it decides whether words
can be answered.
"""

from __future__ import annotations

from autopilotd.ports.engine import Engine, EngineStatus, TurnContext


class EngineRouter:
    """Routes each turn to `commands` or `model` (see the module docstring)."""

    def __init__(self, commands: Engine, model: Engine) -> None:
        self._commands = commands
        self._model = model

    @property
    def name(self) -> str:
        return self._model.name

    def status(self) -> EngineStatus:
        return self._model.status()

    async def run_turn(self, ctx: TurnContext, text: str) -> None:
        engine = self._commands if text.lstrip().startswith("/") else self._model
        await engine.run_turn(ctx, text)
