"""`autopilotd devnet` from a shell: up returns while the net keeps running; down cleans up."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from autopilotd.devnet.coins import MinerKey
from autopilotd.devnet.network import Devnet
from autopilotd.manifest import pid_alive


def devnet(directory: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autopilotd.devnet.cli", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=check,
    )


def devnet_json(directory: Path, *args: str) -> Any:
    return json.loads(devnet(directory, "--json", *args).stdout)


def test_up_status_mine_fund_down(tmp_path: Path) -> None:
    directory = tmp_path / "devnet"
    try:
        info = devnet_json(directory, "up")
        assert pid_alive(info["supervisor_pid"]) and pid_alive(info["btcd_pid"])
        assert (directory / "devnet.json").stat().st_mode & 0o777 == 0o600
        # A second `up` attaches to the running devnet.
        assert devnet_json(directory, "up")["supervisor_pid"] == info["supervisor_pid"]

        status = devnet_json(directory, "status")
        height = status["height"]
        assert status["hub"]["node_id"] == info["hub_node_id"]
        assert status["hub"]["balances"]["spendable_onchain_sats"] > 0

        mined = devnet_json(directory, "mine", "3")
        assert mined["height"] == height + 3

        other = MinerKey.load_or_create(tmp_path / "other.key")
        funded = devnet_json(directory, "fund", other.address, "12345")
        assert len(funded["txid"]) == 64
        assert funded["height"] == height + 4
    finally:
        down = devnet(directory, "down", check=False)
    assert down.returncode == 0, down.stderr
    assert not pid_alive(info["supervisor_pid"])
    assert not pid_alive(info["btcd_pid"])
    assert devnet(directory, "status", check=False).returncode == 1
    assert not (directory / "devnet.json").exists()


async def test_down_after_a_crashed_supervisor_kills_btcd(tmp_path: Path) -> None:
    net = Devnet(tmp_path / "devnet")
    info = await net.up()
    try:
        os.kill(info.supervisor_pid, 9)
    finally:
        await net.down()
    assert not pid_alive(info.btcd_pid)
    assert net.status() is None


async def test_a_devnet_with_an_owner_stops_when_the_owner_is_killed(tmp_path: Path) -> None:
    """A test or demo killed before it could call `down` leaves no devnet behind."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    net = Devnet(tmp_path / "devnet")
    try:
        info = await net.up(owner=owner.pid)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 60
        while pid_alive(info.supervisor_pid) or pid_alive(info.btcd_pid):
            assert time.monotonic() < deadline, "the devnet outlived its owner"
            await asyncio.sleep(0.2)
        assert net.status() is None
    finally:
        owner.kill()
        await net.down()
