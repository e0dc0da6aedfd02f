"""Job sources beyond the open network, as the provider's job flow sees them.

Every job runs through the same flow (provider/flow.py). What differs by source is decided at
admission: a `SourcePolicy` looks at each incoming request first and either leaves it to the
open-network rules (None), claims it (an `Admission`: its source, the price it is invoiced at,
the least bid it must carry), or refuses it (a reason). It then hears of every transition of
every job (`job_changed`) and may end one of its own jobs through `JobControl.abort` (a lease
that ended: the buyer is told `error`, a late payment is still credited if it comes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from autopilotd.nostr.events import SignedEvent
from autopilotd.store.jobs import Job
from autopilotd.vocab import JobSource


@dataclass(frozen=True)
class Admission:
    source: JobSource
    price_msat: int  # what the job's invoice asks
    min_bid_msat: int  # the least bid the request must carry


class JobControl(Protocol):
    async def abort(self, request_id: str, reason: str) -> None:
        """End the job now with `reason` (kind 7000 `error` to its buyer); a job that has
        ended already is left as it is."""
        ...


class SourcePolicy(Protocol):
    """A job source's own rules (a Nexus's starter demand)."""

    def admission(self, event: SignedEvent) -> Admission | str | None:
        """Claim `event` (not yet verified: the signature is checked after), refuse it with a
        reason, or leave it to the open network's rules (None). Cheap and synchronous."""
        ...

    async def job_changed(self, job: Job) -> None:
        """`job` was just recorded at a new stage (must not raise)."""
        ...

    def attach(self, control: JobControl) -> None:
        """Called once by the provider, before any job runs."""
        ...
