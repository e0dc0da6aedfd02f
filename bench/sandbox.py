"""Sandbox start overhead: `true` as a plain subprocess against `true` in the sandbox.

    .venv/bin/python bench/sandbox.py [--runs 200]

Both are started the way the daemon starts them (asyncio subprocesses, stdout and stderr
captured): the baseline runs /bin/true directly; the sandbox runs it through the bubblewrap
backend (new namespaces, seccomp filter, rlimits, nobody) with a fresh workspace. Prints p50
and p95 in milliseconds for each, and the difference at p50 (the goal: at most +30 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from autopilotd.adapters.bwrap_sandbox import BwrapSandbox
from autopilotd.ports.sandbox import Limits


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


async def plain() -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "/bin/true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await proc.communicate()
    return (time.perf_counter() - t0) * 1000


async def sandboxed(sandbox: BwrapSandbox, base: Path, i: int) -> float:
    work = base / f"w{i}"
    work.mkdir()
    t0 = time.perf_counter()
    result = await sandbox.run(work, ["/bin/true"], Limits())
    elapsed = (time.perf_counter() - t0) * 1000
    assert result.exit_code == 0, result
    return elapsed


async def main(runs: int) -> None:
    sandbox = BwrapSandbox()
    reason = sandbox.unavailable()
    if reason is not None:
        raise SystemExit(f"no sandbox here: {reason}")
    base = Path(tempfile.mkdtemp(prefix="autopilotd-bench-sandbox-"))
    base.chmod(0o711)
    try:
        await plain()
        await sandboxed(sandbox, base, -1)  # warm the page cache
        base_ms, box_ms = [], []
        for i in range(runs):  # interleaved, so both see the same machine
            base_ms.append(await plain())
            box_ms.append(await sandboxed(sandbox, base, i))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{runs} runs each, interleaved")
    for name, values in (("plain subprocess", base_ms), ("sandbox (bwrap)", box_ms)):
        print(f"  {name:18} p50 {pct(values, 50):7.2f} ms   p95 {pct(values, 95):7.2f} ms")
    extra = pct(box_ms, 50) - pct(base_ms, 50)
    print(f"  sandbox overhead at p50: +{extra:.2f} ms (goal: at most +30 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    asyncio.run(main(parser.parse_args().runs))
