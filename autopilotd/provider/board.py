"""The job board: the snapshot's `jobs` section (inbox, active jobs, refusals, queue).

The inbox is the recent jobs from the repository plus the previews of requests seen while
offline (never claimable, never a job row), newest first. The board writes the section only
when something it shows changed: after a job moved (`refresh`), a preview, a refusal counted,
the queue or the outbox changed.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from autopilotd.nostr.intake import RequestParser
from autopilotd.nostr.nip90 import JobRequest
from autopilotd.nostr.reasons import Rejection
from autopilotd.runtime.sections import JobsSection
from autopilotd.runtime.state import SectionWriter
from autopilotd.store.jobs import Job, Jobs
from autopilotd.store.outbox import Outbox
from autopilotd.vocab import OPEN_STAGES

INBOX_ROWS = 20
PROMPT_CHARS = 200


class JobBoard:
    def __init__(
        self,
        *,
        jobs: Jobs,
        outbox: Outbox,
        parser: RequestParser,
        writer: SectionWriter[JobsSection],
        queue_depth: Callable[[], int],
    ) -> None:
        self._jobs = jobs
        self._outbox = outbox
        self._parser = parser
        self._writer = writer
        self._queue_depth = queue_depth
        self._previews: deque[dict[str, Any]] = deque(maxlen=INBOX_ROWS)
        self._prompts: OrderedDict[str, str] = OrderedDict()
        self._busy = 0
        self._counters: Mapping[str, int] = {}

    def preview(self, request: JobRequest, received_at: float) -> None:
        """A request seen while offline: shown, never accepted."""
        self._previews.appendleft(
            {
                "request_id": request.id,
                "kind": request.kind,
                "buyer": request.pubkey,
                "bid_sats": request.bid_msat // 1000,
                "prompt": request.prompt[:PROMPT_CHARS],
                "received_at": received_at,
                "stage": "preview",
                "claimable": False,
            }
        )

    def counted(self, counters: Mapping[str, int]) -> None:
        """The intake's refusal counters (every reason that occurred)."""
        self._counters = counters
        self._publish()

    def busy(self) -> None:
        """A valid request refused because the queue was full."""
        self._busy += 1
        self._publish()

    def queue_changed(self) -> None:
        self._publish()

    def _publish(self, **changes: Any) -> None:
        counts = {k: v for k, v in self._counters.items() if v}
        if self._busy:
            counts["busy"] = self._busy
        self._writer.put(
            dataclasses.replace(
                self._writer.current,
                rejections=counts,
                queue_depth=self._queue_depth(),
                **changes,
            )
        )

    async def refresh(self) -> None:
        """Reload the recent jobs and the outbox count, and publish what changed."""
        recent = await self._jobs.history(limit=INBOX_ROWS, before=None)
        rows = [{**j.to_json(), "prompt": self._prompt(j), "claimable": False} for j in recent]
        inbox = sorted([*rows, *self._previews], key=lambda r: -float(r.get("received_at", 0)))[
            :INBOX_ROWS
        ]
        last = recent[0] if recent else None
        self._publish(
            inbox=tuple(inbox),
            active=tuple(r for r in rows if r["stage"] in OPEN_STAGES),
            outbox_waiting=await self._outbox.waiting(),
            last=None
            if last is None
            else {"request_id": last.request_id, "stage": last.stage.value, "reason": last.reason},
        )

    def _prompt(self, job: Job) -> str:
        """What the buyer asked, for the inbox (parsed once per job, a bounded cache)."""
        prompt = self._prompts.get(job.request_id)
        if prompt is None:
            parsed = self._parser.parse(job.request_json, now=job.received_at)
            prompt = "" if isinstance(parsed, Rejection) else parsed.prompt[:PROMPT_CHARS]
            self._prompts[job.request_id] = prompt
            while len(self._prompts) > 4 * INBOX_ROWS:
                self._prompts.popitem(last=False)
        return prompt
