"""Autopilot Chat: threads of turns of items, done by an engine (docs/chat.md)."""
