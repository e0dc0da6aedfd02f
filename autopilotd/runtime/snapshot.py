"""The frozen Snapshot: the one source of truth every surface renders.

A new Snapshot replaces the old one whole on every change, with `seq + 1`. JSON-RPC `status`,
the web panes and `autopilotctl status` all render `Snapshot.to_json()`; nothing on a surface
computes its own truth. Each section has one owner, which writes it through the state store's
writer (runtime/state.py); later services add sections here as new fields with defaults.

What follows from the sections together (what blocks earning, the alerts, whether the daemon
earns now, the milestone to celebrate, relay counts) is derived once per snapshot, in
`facts.py`, and carried as `Snapshot.facts`: surfaces select and label it, never recompute it.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from autopilotd.runtime.facts import Facts, derive
from autopilotd.runtime.sections import (
    BuyerSection,
    ChatSection,
    DaemonSection,
    EarningsSection,
    FinetuneSection,
    IdentitySection,
    JobsSection,
    LocalRuntimeSection,
    ProviderSection,
    RecoverySection,
    RelayRow,
    SandboxSection,
    ServiceStatus,
    StarterSection,
    SyncSection,
    WalletSection,
)


@dataclass(frozen=True)
class Snapshot:
    seq: int
    daemon: DaemonSection
    identity: IdentitySection | None = None
    services: tuple[ServiceStatus, ...] = field(default_factory=tuple)
    wallet: WalletSection = field(default_factory=WalletSection)
    local_runtime: LocalRuntimeSection = field(default_factory=LocalRuntimeSection)
    provider: ProviderSection = field(default_factory=ProviderSection)
    relays: tuple[RelayRow, ...] = ()
    jobs: JobsSection = field(default_factory=JobsSection)
    earnings: EarningsSection = field(default_factory=EarningsSection)
    buyer: BuyerSection = field(default_factory=BuyerSection)
    starter: StarterSection = field(default_factory=StarterSection)
    sync: SyncSection = field(default_factory=SyncSection)
    recovery: RecoverySection = field(default_factory=RecoverySection)
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    chat: ChatSection = field(default_factory=ChatSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    facts: Facts = field(init=False, compare=False, repr=False)
    """Derived from the sections above when the snapshot is made (never written by anyone)."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "facts",
            derive(
                identity=self.identity,
                services=self.services,
                wallet=self.wallet,
                local_runtime=self.local_runtime,
                provider=self.provider,
                relays=self.relays,
                earnings=self.earnings,
            ),
        )

    def service(self, name: str) -> ServiceStatus | None:
        return next((s for s in self.services if s.name == name), None)

    def with_service(self, status: ServiceStatus) -> tuple[ServiceStatus, ...]:
        """The services tuple with `status` replacing (or joining) its namesake, in name order."""
        others = [s for s in self.services if s.name != status.name]
        return tuple(sorted([*others, status], key=lambda s: s.name))

    def to_json(self, now: float) -> dict[str, Any]:
        """The snapshot as JSON; `uptime_s` is the daemon's age at `now`."""
        data = asdict(self)
        data["daemon"]["uptime_s"] = round(max(0.0, now - self.daemon.started_at), 3)
        plain: dict[str, Any] = _plain(data)
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
