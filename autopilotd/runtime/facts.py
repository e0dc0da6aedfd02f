"""What follows from the snapshot's sections together, derived once per snapshot.

`derive` is a pure function of the sections. Its answers are what the surfaces used to work
out for themselves: what keeps this daemon from earning (and what to do), whether it earns
now, the alerts (failed services, sections in a bad state), the milestone to celebrate, and
how many relays are connected. The registry's command preconditions (`needs=`) and the
provider's Go Online read the same blockers, so a refusal says the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autopilotd.runtime.sections import (
    Blocker,
    EarningsSection,
    IdentitySection,
    LocalRuntimeSection,
    ProviderSection,
    ProviderState,
    RelayRow,
    ServiceState,
    ServiceStatus,
    WalletSection,
    WalletState,
)

SERVED_MODEL_KINDS = ("chat", "embeddings")
"""The local runtime's model kinds the provider sells (text generation, embeddings)."""

NEEDS = ("identity", "wallet", "inbound", "inference", "relays")
"""What a command may need (`Registry.command(needs=…)`), in the order blockers are shown.
`inbound`: the wallet can be paid (a channel with room to receive, or an LSP to open one)."""

BAD_STATES = frozenset({"failed", "degraded", "error"})


@dataclass(frozen=True)
class Alert:
    """Something broken the user should see: where, what, what to do, since when."""

    source: str
    state: str
    what: str
    do: str
    since: float | None


@dataclass(frozen=True)
class Earning:
    """Whether this daemon earns right now, and why (not)."""

    possible: bool
    why: str
    wallet_ready: bool


@dataclass(frozen=True)
class RelayCount:
    connected: int
    total: int


@dataclass(frozen=True)
class Facts:
    blockers: tuple[tuple[str, Blocker], ...]
    """(need, blocker) for each need that does not hold now, in NEEDS order."""
    earning: Earning
    alerts: tuple[Alert, ...]
    celebrate: int | None
    """The lowest earnings milestone reached and not yet celebrated."""
    relays: RelayCount

    def blocker(self, need: str) -> Blocker | None:
        return next((b for n, b in self.blockers if n == need), None)

    @property
    def earn_blockers(self) -> tuple[Blocker, ...]:
        """What keeps the provider from earning: every need's blocker."""
        return tuple(b for _, b in self.blockers)


def derive(
    *,
    identity: IdentitySection | None,
    services: Sequence[ServiceStatus],
    wallet: WalletSection,
    local_runtime: LocalRuntimeSection,
    provider: ProviderSection,
    relays: Sequence[RelayRow],
    earnings: EarningsSection,
) -> Facts:
    connected = sum(1 for r in relays if r.connected)
    blockers = _blockers(identity, wallet, local_runtime, relays, connected)
    wallet_ready = wallet.state is WalletState.READY
    return Facts(
        blockers=blockers,
        earning=Earning(
            possible=provider.state is ProviderState.ONLINE and wallet_ready,
            why=provider.reason,
            wallet_ready=wallet_ready,
        ),
        alerts=_alerts(
            services,
            (("wallet", wallet), ("local_runtime", local_runtime), ("provider", provider)),
        ),
        celebrate=next(
            (m["sats"] for m in earnings.milestones if m["reached_at"] and not m["celebrated"]),
            None,
        ),
        relays=RelayCount(connected=connected, total=len(relays)),
    )


def _blockers(
    identity: IdentitySection | None,
    wallet: WalletSection,
    runtime: LocalRuntimeSection,
    relays: Sequence[RelayRow],
    connected: int,
) -> tuple[tuple[str, Blocker], ...]:
    out: list[tuple[str, Blocker]] = []
    if identity is None:
        out.append(("identity", Blocker("identity", "no Nostr identity", "restart autopilotd")))
    if wallet.state is not WalletState.READY:
        out.append(
            (
                "wallet",
                Blocker(
                    "wallet",
                    f"the wallet is {wallet.state.words}: {wallet.reason}",
                    wallet.next_step or "wait until the wallet is ready",
                ),
            )
        )
    balance = wallet.balance
    if (
        wallet.state is WalletState.READY
        and balance is not None
        and balance.receivable_sats == 0
        and not wallet.lsp
    ):
        out.append(
            (
                "inbound",
                Blocker(
                    "inbound",
                    "no channel can receive a payment and no LSP is set to open one",
                    "set wallet_lsp (or a network_profile with an LSP) in config.toml, or get "
                    "a channel opened to this wallet; see docs/onboarding.md",
                ),
            )
        )
    if not any(runtime.has_model(kind) for kind in SERVED_MODEL_KINDS):
        out.append(
            (
                "inference",
                Blocker(
                    "model",
                    f"no model ready ({runtime.state.value}: {runtime.reason})",
                    runtime.next_step or "wait for psionic to load its models",
                ),
            )
        )
    if not relays:
        out.append(
            (
                "relays",
                Blocker("relays", "no relays configured", "add a relay in Relay Connections"),
            )
        )
    elif not connected:
        out.append(
            (
                "relays",
                Blocker("relays", "no relay is connected", "check the relays in Relay Connections"),
            )
        )
    return tuple(out)


def _alerts(
    services: Sequence[ServiceStatus], sections: Sequence[tuple[str, object]]
) -> tuple[Alert, ...]:
    out: list[Alert] = []
    for s in services:
        if s.state is ServiceState.FAILED:
            out.append(
                Alert(
                    source=f"service {s.name}",
                    state=s.state.value,
                    what=s.last_error or "it stopped",
                    do=s.next_step or "read 'autopilotctl logs', then restart autopilotd",
                    since=s.since,
                )
            )
    for name, section in sections:
        state = str(getattr(section, "state", ""))
        if state in BAD_STATES:
            out.append(
                Alert(
                    source=name.replace("_", " "),
                    state=state,
                    what=getattr(section, "reason", "") or getattr(section, "last_error", "") or "",
                    do=getattr(section, "next_step", None) or "read 'autopilotctl logs'",
                    since=getattr(section, "updated_at", None),
                )
            )
    return tuple(out)
