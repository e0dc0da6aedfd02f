"""Fixtures for the Nostr layer: identities, local relays on loopback, pools."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from autopilotd.nostr.identity import NostrIdentity, generate_identity
from autopilotd.nostr.relay import RunningRelay, local_relay


@pytest.fixture
def provider() -> NostrIdentity:
    return generate_identity()


@pytest.fixture
def buyer() -> NostrIdentity:
    return generate_identity()


@pytest.fixture
async def relays() -> AsyncIterator[list[RunningRelay]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(local_relay()) for _ in range(3)]
