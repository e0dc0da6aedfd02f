"""Durable state: SQLite through aiosqlite (WAL, synchronous=FULL, foreign keys, one writer)."""

from autopilotd.store.db import Store

__all__ = ["Store"]
