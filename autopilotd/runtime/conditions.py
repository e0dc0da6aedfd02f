"""Named snapshot predicates for `autopilotctl wait` (daemon-ready now; later issues add theirs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autopilotd.errors import InvalidParams
from autopilotd.runtime.sections import (
    DaemonState,
    ProviderState,
    RuntimeState,
    WalletState,
)
from autopilotd.runtime.snapshot import Snapshot

Predicate = Callable[[Snapshot], bool]


@dataclass(frozen=True)
class Condition:
    name: str
    help: str
    predicate: Predicate


class Conditions:
    def __init__(self) -> None:
        self._items: dict[str, Condition] = {}

    def add(self, name: str, help: str, predicate: Predicate) -> None:
        if name in self._items:
            raise ValueError(f"condition {name!r} is defined twice")
        self._items[name] = Condition(name, help, predicate)

    def get(self, name: str) -> Condition:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise InvalidParams(f"unknown condition '{name}'; known: {known}") from None

    def all(self) -> list[Condition]:
        return [self._items[n] for n in sorted(self._items)]


def builtin_conditions() -> Conditions:
    conditions = Conditions()
    conditions.add(
        "daemon-ready",
        "the daemon has started every service and its control plane answers",
        lambda s: s.daemon.state is DaemonState.READY,
    )
    conditions.add(
        "wallet-ready",
        "the wallet's node is synced and ready to receive and send",
        lambda s: s.wallet.state is WalletState.READY,
    )
    conditions.add(
        "runtime-ready",
        "the local inference runtime answers and has a model",
        lambda s: s.local_runtime.state is RuntimeState.READY,
    )
    conditions.add(
        "provider-online",
        "the provider is online and accepting jobs",
        lambda s: s.provider.state is ProviderState.ONLINE,
    )
    conditions.add(
        "provider-offline",
        "the provider is offline",
        lambda s: s.provider.state is ProviderState.OFFLINE,
    )
    conditions.add(
        "job-received",
        "a job request is in the inbox",
        lambda s: bool(s.jobs.inbox),
    )
    conditions.add(
        "buy-paid",
        "at least one of our own requests was delivered and paid",
        lambda s: s.buyer.paid_requests > 0,
    )
    conditions.add(
        "job-paid",
        "at least one job was paid, as the wallet confirmed",
        lambda s: s.earnings.lifetime_jobs > 0,
    )
    return conditions
