"""The sections of the Snapshot, one frozen dataclass each, with their lifecycle enums.

Each section has exactly one writer (the service that owns it, through `StateStore.writer`);
see snapshot.py for the whole and facts.py for what is derived from the sections together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from autopilotd.vocab import MILESTONES_SATS


class DaemonState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class ServiceState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class IdentitySection:
    """The daemon's public Nostr identity (derived from the wallet's words at start-up)."""

    npub: str
    hex: str


@dataclass(frozen=True)
class DaemonSection:
    version: str
    pid: int
    started_at: float
    home: str
    session_id: str
    state: DaemonState = DaemonState.STARTING
    rpc_url: str | None = None
    web_url: str | None = None


@dataclass(frozen=True)
class ServiceStatus:
    """A service's lifecycle as the user sees it: what it is doing, what broke, what to do."""

    name: str
    state: ServiceState
    since: float
    last_error: str | None = None
    next_step: str | None = None


class WalletState(enum.StrEnum):
    NEEDS_SETUP = "needs_setup"  # a first run: no backup confirmed, no network chosen
    OFF = "off"

    @property
    def words(self) -> str:
        """The state as a sentence says it: "the wallet is …"."""
        return "not set up yet" if self is WalletState.NEEDS_SETUP else self.value

    STARTING = "starting"
    SYNCING = "syncing"
    READY = "ready"
    DEGRADED = "degraded"
    ERROR = "error"


@dataclass(frozen=True)
class WalletBalance:
    """Always the node's own figures (never computed from the ledger), plus open reservations."""

    lightning_sats: int
    spendable_sats: int
    receivable_sats: int
    onchain_sats: int
    onchain_spendable_sats: int
    pending_sats: int
    reserved_sats: int


@dataclass(frozen=True)
class WalletSection:
    state: WalletState = WalletState.OFF
    reason: str = "the wallet is not configured"
    next_step: str | None = "set wallet_network (and its chain source) in config.toml"
    network: str | None = None
    node_id: str | None = None
    listening: str | None = None
    lsp: str | None = None  # the LSPS2 LSP's node id, when one is configured
    balance: WalletBalance | None = None
    last_payment: dict[str, Any] | None = None
    restored_at: float | None = None  # the words were restored here: channels did not come back
    updated_at: float | None = None


class RuntimeState(enum.StrEnum):
    OFF = "off"
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    ERROR = "error"


@dataclass(frozen=True)
class ModelView:
    id: str
    kind: str
    warm: bool


@dataclass(frozen=True)
class LocalRuntimeSection:
    """The local inference runtime (psionic) as the daemon sees it over HTTP."""

    state: RuntimeState = RuntimeState.OFF
    reason: str = "no local runtime is configured"
    next_step: str | None = 'set runtime_mode = "spawn" (or a runtime_url) in config.toml'
    url: str | None = None
    managed: bool = False
    device: str | None = None
    dtype: str | None = None
    models: tuple[ModelView, ...] = ()
    queue_depth: int = 0
    last_error: str | None = None
    updated_at: float | None = None

    def has_model(self, kind: str) -> bool:
        """A warm model of this kind ("chat" or "embeddings") is ready to run jobs."""
        return self.state is RuntimeState.READY and any(
            m.kind == kind and m.warm for m in self.models
        )


class ProviderState(enum.StrEnum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    ONLINE = "online"
    DEGRADED = "degraded"


@dataclass(frozen=True)
class Blocker:
    """Something that keeps the provider from earning, with what the user can do about it."""

    id: str
    reason: str
    next_step: str


@dataclass(frozen=True)
class ProviderSection:
    state: ProviderState = ProviderState.OFFLINE
    reason: str = "offline: click Go Online (or run 'autopilotctl provider online')"
    blockers: tuple[Blocker, ...] = ()
    served_kinds: tuple[int, ...] = ()
    price_sats: int = 0
    max_inflight: int = 1
    online_since: float | None = None
    announced_at: float | None = None  # when the NIP-89 handler last reached a relay


@dataclass(frozen=True)
class RelayRow:
    url: str
    state: str
    connected: bool
    last_seen: float | None = None
    last_error: str | None = None
    events_in: int = 0
    events_out: int = 0
    publish_accepted: int = 0
    publish_rejected: int = 0


@dataclass(frozen=True)
class JobsSection:
    """The job inbox and active jobs, from the provider's own records."""

    inbox: tuple[dict[str, Any], ...] = ()  # newest first; offline rows are previews
    active: tuple[dict[str, Any], ...] = ()
    rejections: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    outbox_waiting: int = 0  # signed job events no relay has accepted yet
    last: dict[str, Any] | None = None  # the newest job: request_id, stage, reason


@dataclass(frozen=True)
class EarningsSection:
    """Counted only from wallet-confirmed payments bound to jobs."""

    sats_today: int = 0
    lifetime_sats: int = 0
    jobs_today: int = 0
    lifetime_jobs: int = 0
    last_payment: dict[str, Any] | None = None
    series: tuple[tuple[float, int], ...] = ()  # (at, lifetime sats after it), recent credits
    milestones: tuple[dict[str, Any], ...] = tuple(
        {"sats": m, "reached_at": None, "celebrated": False} for m in MILESTONES_SATS
    )


@dataclass(frozen=True)
class BuyerSection:
    open_requests: int = 0
    paid_requests: int = 0
    last_request: dict[str, Any] | None = None


class StarterState(enum.StrEnum):
    OFF = "off"  # no Nexus configured
    IDLE = "idle"  # the provider is offline: starter jobs come only while online
    CONNECTING = "connecting"  # opening a session
    WAITING = "waiting"  # a session, polling: no offer right now
    INELIGIBLE = "ineligible"  # the Nexus says why not (its reason)
    OFFERED = "offered"  # an offer to ack
    LEASED = "leased"  # an acked offer: its job runs, awaits payment, or is being confirmed
    UNREACHABLE = "unreachable"  # the Nexus did not answer; retrying


@dataclass(frozen=True)
class StarterSection:
    """Starter demand from a Nexus, as the provider sees it (starter/service.py).

    Deadlines in `offer` are the Nexus's; `sats_earned` and `jobs_done` count only the
    wallet's own settled payments for starter jobs (the earnings table), never the Nexus's word.
    """

    state: StarterState = StarterState.OFF
    reason: str = "no Nexus is configured (set nexus_url in Settings)"
    nexus_url: str | None = None
    nexus_pubkey: str | None = None
    session: dict[str, Any] | None = None  # session_id, opened_at, expires_at
    eligible: bool | None = None
    eligibility_reason: str | None = None
    offer: dict[str, Any] | None = None  # the offer held now, with its lease timers
    last_offer: dict[str, Any] | None = None  # how the previous one ended
    budget: dict[str, int] = field(default_factory=dict)
    jobs_done: int = 0
    sats_earned: int = 0
    last_poll_at: float | None = None
    last_error: str | None = None


class SyncState(enum.StrEnum):
    STARTING = "starting"  # reading what is held, recording what is new
    IDLE = "idle"  # between reconciliations
    RECONCILING = "reconciling"


@dataclass(frozen=True)
class SyncSection:
    """History sync over the user's relays (sync/service.py): records held, and each relay's
    last reconciliation (have = ours it lacked, need = its we lacked). Restored history is
    shown as restored and never counted as earnings."""

    state: SyncState = SyncState.STARTING
    records: int = 0
    restored: int = 0  # jobs, requests and payments known only from a relay
    relays: tuple[dict[str, Any], ...] = ()
    last_error: str | None = None


@dataclass(frozen=True)
class RecoverySection:
    """A restored wallet's share of its old channels, found on chain and swept back
    (wallet/recovery.py). Off unless the words were restored and the chain source is bitcoind
    RPC. `recovered_sats` counts only sweeps the chain confirmed."""

    state: str = "off"  # off | scanning | watching
    reason: str = "the wallet was not restored from words"
    scanned_height: int | None = None
    outputs: tuple[dict[str, Any], ...] = ()
    recovered_sats: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class SandboxSection:
    """Sandbox jobs (sandbox/service.py): whether this machine can isolate a run and why not,
    the runtimes and the limits a job gets at most, and the most recent jobs (no output: that
    is `sandbox.get`)."""

    state: str = "starting"  # starting | ready | unavailable
    reason: str = "checking whether this machine can isolate a run"
    runtimes: dict[str, str] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    jobs: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ChatSection:
    """Autopilot Chat (chat/service.py): threads by status, the turns running now, and the
    most recent threads (their turns and items are `thread.read`)."""

    state: str = "starting"  # starting (ending what a stop left running) | ready
    reason: str = "ending the turns a stop left running"
    threads: dict[str, int] = field(default_factory=dict)  # by status: active, archived
    running_turns: int = 0
    recent: tuple[dict[str, Any], ...] = ()  # id, title, status, updated_at, last_turn


@dataclass(frozen=True)
class FinetuneSection:
    """Fine-tuning (finetune/service.py): the tenant API's address, whether the trainer
    (psionic) answers, tenants, job counts by status, the recent jobs and the promoted models."""

    state: str = "starting"  # starting | ready | degraded (the trainer does not answer)
    reason: str = "picking up the jobs a stop left running"
    api_url: str | None = None
    tenants: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    jobs: tuple[dict[str, Any], ...] = ()  # newest first: id, tenant, status, step, promotion
    models: tuple[dict[str, Any], ...] = ()  # id, tenant, base, revision, previous, job, step
    last_error: str | None = None
