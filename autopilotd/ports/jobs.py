"""Job sources beyond the open network, and the kinds of work, as the provider's job flow
sees them.

Every job runs through the same flow (provider/flow.py). What differs by source is decided at
admission: a `SourcePolicy` looks at each incoming request first and either leaves it to the
open-network rules (None), claims it (an `Admission`: its source, the price it is invoiced at,
the least bid it must carry), or refuses it (a reason). It then hears of every transition of
every job (`job_changed`) and may end one of its own jobs through `JobControl.abort` (a lease
that ended: the buyer is told `error`, a late payment is still credited if it comes).

A `Work` does one family of job kinds (text generation and embeddings on the local model,
sandboxed code, fine-tuning): it prices a request, says when this machine does not do its kinds
now, and does the job. The flow picks the work by the request's kind; everything else is the
same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from autopilotd.nostr.events import SignedEvent
from autopilotd.nostr.nip90 import JobRequest
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


class WorkFailed(Exception):
    """The job could not be done; `reason` is short and safe to tell its buyer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Work(Protocol):
    kinds: frozenset[int]
    needs: tuple[str, ...]
    """What must hold (snapshot needs, runtime/facts.py) before a job of these kinds runs."""

    def refusal(self) -> str | None:
        """Why this machine does not do these kinds now (they are not advertised, and their
        requests are refused), or None."""
        ...

    def min_bid_msat(self) -> int:
        """The least any job of these kinds costs (checked before the signature)."""
        ...

    def price_msat(self, request: JobRequest) -> int | str:
        """What this request is invoiced at, or why it is not a job of these kinds."""
        ...

    async def execute(self, request: JobRequest) -> str:
        """Do the job; the result event's content. Raises WorkFailed."""
        ...
