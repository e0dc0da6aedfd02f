"""Fixtures for the relay adapters: identities, and local relays on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from autopilotd.adapters.local_relay import RunningRelay, local_relay
from autopilotd.nostr.identity import NostrIdentity, generate_identity


@pytest.fixture
def provider() -> NostrIdentity:
    return generate_identity()


@pytest.fixture
def buyer() -> NostrIdentity:
    return generate_identity()


@pytest.fixture
async def relays() -> AsyncIterator[list[RunningRelay]]:
    """Three local relays, each on its own loopback port."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(local_relay()) for _ in range(3)]
