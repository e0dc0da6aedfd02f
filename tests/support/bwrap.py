"""The mark for tests that run commands in the real bubblewrap sandbox: skipped, with the
reason, on a machine where bubblewrap cannot isolate a run."""

from __future__ import annotations

import pytest

from autopilotd.adapters.bwrap_sandbox import BwrapSandbox

needs_bwrap = pytest.mark.skipif(
    BwrapSandbox().unavailable() is not None, reason="bubblewrap cannot run here"
)
