"""Fixtures of the chat tests."""

from __future__ import annotations

from support.chat import user_workspace  # noqa: F401 (a fixture, shared with tests/web)
