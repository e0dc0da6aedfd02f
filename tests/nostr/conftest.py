"""Fixtures for the Nostr layer: a provider's and a buyer's identity."""

from __future__ import annotations

import pytest

from autopilotd.nostr.identity import NostrIdentity, generate_identity


@pytest.fixture
def provider() -> NostrIdentity:
    return generate_identity()


@pytest.fixture
def buyer() -> NostrIdentity:
    return generate_identity()
