"""`autopilotd relay`: loopback only, prints its URL once listening, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from support.relays import until

from autopilotd.adapters.local_relay import RelayStartError, check_loopback, local_relay, main
from autopilotd.adapters.relay_pool import PoolConfig, RelayPool, running
from autopilotd.nostr.identity import NostrIdentity
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.ports.relays import PublishOutcome

ENTRY = "import sys; from autopilotd.adapters.local_relay import main; sys.exit(main(sys.argv[1:]))"


def test_loopback_only(capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert check_loopback(host) == host
    for host in ("0.0.0.0", "192.168.1.2", "::", "example.com"):
        with pytest.raises(RelayStartError):
            check_loopback(host)
    assert main(["--host", "0.0.0.0"]) == 1
    assert "loopback only" in capsys.readouterr().err
    assert main(["--port", "70000"]) == 2


async def test_cli_serves_until_sigterm(buyer: NostrIdentity) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ENTRY,
        "--print-url",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        url = line.decode().strip()
        assert url.startswith("ws://127.0.0.1:")
        pool = RelayPool(PoolConfig(relays=(url,)))
        async with running(pool):
            await until(lambda: pool.health()[0].connected)
            report = await pool.publish(build_job_request(buyer, 5050, "x", bid_msat=1))
            assert report.answers[0].outcome == PublishOutcome.ACCEPTED
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_rate_limit_is_raised(buyer: NostrIdentity) -> None:
    """The SDK's default is 60 events a minute per connection; 150 in a burst must pass."""
    async with local_relay() as relay:
        pool = RelayPool(PoolConfig(relays=(relay.url,)))
        async with running(pool):
            await until(lambda: pool.health()[0].connected)
            for n in range(150):
                report = await pool.publish(build_job_request(buyer, 5050, f"{n}", bid_msat=1))
                assert report.any_accepted, report
