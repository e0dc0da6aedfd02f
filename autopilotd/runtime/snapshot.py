"""The frozen Snapshot: the one source of truth every surface renders.

A new Snapshot replaces the old one whole on every change, with `seq + 1`. JSON-RPC `status`,
the web panes and `autopilotctl status` all render `Snapshot.to_json()`; nothing on a surface
computes its own truth. Later services add sections here as new fields with defaults.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


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
    OFF = "off"
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
    balance: WalletBalance | None = None
    last_payment: dict[str, Any] | None = None
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
    npub: str | None = None
    served_kinds: tuple[int, ...] = ()
    price_sats: int = 0
    max_inflight: int = 1
    online_since: float | None = None
    heartbeat_at: float | None = None


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


MILESTONES_SATS = (10, 25, 50, 100)
"""Lifetime earnings worth celebrating, each once (reached in the credit that crosses it)."""


@dataclass(frozen=True)
class EarningsSection:
    """Counted only from wallet-confirmed payments bound to jobs."""

    sats_today: int = 0
    lifetime_sats: int = 0
    jobs_today: int = 0
    lifetime_jobs: int = 0
    last_job: dict[str, Any] | None = None
    last_payment: dict[str, Any] | None = None
    series: tuple[tuple[float, int], ...] = ()  # (at, lifetime sats after it), recent credits
    milestones: tuple[dict[str, Any], ...] = tuple(
        {"sats": m, "reached_at": None, "celebrated": False} for m in MILESTONES_SATS
    )
    celebrate: int | None = None  # the lowest milestone reached and not celebrated yet


@dataclass(frozen=True)
class BuyerSection:
    open_requests: int = 0
    paid_requests: int = 0
    last_request: dict[str, Any] | None = None


@dataclass(frozen=True)
class Snapshot:
    seq: int
    daemon: DaemonSection
    services: tuple[ServiceStatus, ...] = field(default_factory=tuple)
    wallet: WalletSection = field(default_factory=WalletSection)
    local_runtime: LocalRuntimeSection = field(default_factory=LocalRuntimeSection)
    provider: ProviderSection = field(default_factory=ProviderSection)
    relays: tuple[RelayRow, ...] = ()
    jobs: JobsSection = field(default_factory=JobsSection)
    earnings: EarningsSection = field(default_factory=EarningsSection)
    buyer: BuyerSection = field(default_factory=BuyerSection)

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
