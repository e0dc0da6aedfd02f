"""What the snapshot derives from its sections: alerts, earning now, blockers, milestones."""

from __future__ import annotations

import dataclasses
from typing import Any

from autopilotd.runtime.sections import (
    DaemonSection,
    EarningsSection,
    IdentitySection,
    LocalRuntimeSection,
    ModelView,
    ProviderSection,
    ProviderState,
    RelayRow,
    RuntimeState,
    WalletSection,
    WalletState,
)
from autopilotd.runtime.snapshot import Snapshot


def _snapshot(**sections: Any) -> Snapshot:
    return Snapshot(seq=7, daemon=DaemonSection("0", 1, 100.0, "/h", "s"), **sections)


def test_alerts_read_the_state_of_every_section() -> None:
    snapshot = _snapshot(
        wallet=WalletSection(
            state=WalletState.DEGRADED, reason="the node does not answer", next_step="wait"
        ),
        local_runtime=LocalRuntimeSection(
            state=RuntimeState.ERROR, reason="psionic exited", next_step=None
        ),
        provider=ProviderSection(state=ProviderState.ONLINE, reason="serving"),
    )
    found = snapshot.to_json(now=110.0)["facts"]["alerts"]
    assert [(a["source"], a["state"]) for a in found] == [
        ("wallet", "degraded"),
        ("local runtime", "error"),
    ]
    assert found[1]["do"] == "read 'autopilotctl logs'"
    earning = snapshot.to_json(now=110.0)["facts"]["earning"]
    assert earning == {"possible": False, "why": "serving", "wallet_ready": False}
    ready = dataclasses.replace(snapshot, wallet=WalletSection(state=WalletState.READY))
    assert ready.facts.earning.possible is True


def test_blockers_name_each_need_and_clear_when_it_holds() -> None:
    bare = _snapshot()
    assert [b.id for b in bare.facts.earn_blockers] == ["identity", "wallet", "model", "relays"]
    assert bare.facts.blocker("relays") is not None
    assert bare.facts.blocker("relays").reason == "no relays configured"  # type: ignore[union-attr]
    ready = _snapshot(
        identity=IdentitySection("npub1x", "ab" * 32),
        wallet=WalletSection(state=WalletState.READY, reason="ready"),
        local_runtime=LocalRuntimeSection(
            state=RuntimeState.READY, models=(ModelView("m", "chat", True),)
        ),
        relays=(RelayRow("ws://r", "connected", True),),
    )
    assert ready.facts.earn_blockers == ()
    assert ready.facts.relays.connected == ready.facts.relays.total == 1
    cold = dataclasses.replace(
        ready, local_runtime=dataclasses.replace(ready.local_runtime, models=())
    )
    assert [b.id for b in cold.facts.earn_blockers] == ["model"]
    assert cold.facts.blocker("inference") is not None


def test_the_milestone_to_celebrate_is_the_lowest_reached_and_not_yet_seen() -> None:
    milestones = (
        {"sats": 10, "reached_at": 1.0, "celebrated": True},
        {"sats": 25, "reached_at": 2.0, "celebrated": False},
        {"sats": 50, "reached_at": 3.0, "celebrated": False},
        {"sats": 100, "reached_at": None, "celebrated": False},
    )
    assert _snapshot(earnings=EarningsSection(milestones=milestones)).facts.celebrate == 25
    assert _snapshot().facts.celebrate is None


def test_facts_do_not_make_two_equal_snapshots_differ() -> None:
    assert _snapshot() == _snapshot()
