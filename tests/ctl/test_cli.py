"""autopilotctl against a real daemon process, as a new user would use it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import BIN, DaemonFactory, DaemonProcess, InProcessDaemon, run_ctl

from autopilotd.ctl.main import UsageError
from autopilotd.ctl.main import run as ctl_run
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def test_new_user_walkthrough(daemon_process: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    d = daemon_process(tmp_path / "some-dir")
    r = d.ctl("status")
    assert r.returncode == 0, r.stderr
    assert "READY" in r.stdout and "control_plane" in r.stdout and "running" in r.stdout

    r = d.ctl("--json", "status")
    snap = json.loads(r.stdout)
    assert snap["daemon"]["pid"] == d.proc.pid and snap["seq"] >= 1

    r = d.ctl("commands")
    assert r.returncode == 0 and "system.commands" in r.stdout and "daemon.stop" in r.stdout

    r = d.ctl("wait", "daemon-ready", "--timeout", "10")
    assert r.returncode == 0 and "met" in r.stdout

    r = d.ctl("logs", "mark", "--message", "hello from the test")
    assert r.returncode == 0, r.stderr
    r = d.ctl("logs.mark", "--message=second")
    assert r.returncode == 0, r.stderr
    r = d.ctl("events", "--after", "0")
    assert "logs.marked" in r.stdout and "hello from the test" in r.stdout
    r = d.ctl("logs", "--tail", "5")
    assert r.returncode == 0 and "logs.marked" in r.stdout
    r = d.ctl("logs.tail", "--help")
    assert "--lines integer" in r.stdout

    r = d.ctl("stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert d.wait_exit() == 0
    assert not d.paths.manifest_file.exists()
    records = [
        json.loads(line) for line in (d.paths.log_dir / "latest.jsonl").read_text().splitlines()
    ]
    assert records[-1]["message"] == "autopilotd stopped cleanly"
    assert all({"ts", "level", "source", "message"} <= set(r) for r in records)


def test_exit_codes(daemon_process: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    r = run_ctl("--home", str(tmp_path / "nobody"), "status")
    assert r.returncode == 3 and "not running" in r.stderr
    d = daemon_process(tmp_path / "h")
    assert d.ctl("no.such.command").returncode == 2
    assert d.ctl("logs.mark").returncode == 2  # missing --message
    assert d.ctl("logs.tail", "--lines", "many").returncode == 2
    r = d.ctl("logs.tail", "--lines", "0")
    assert r.returncode == 1 and "lines" in r.stderr
    r = d.ctl("wait", "daemon-ready-not", "--timeout", "1")
    assert r.returncode == 1 and "unknown condition" in r.stderr
    assert run_ctl().returncode == 2
    r = d.ctl("approvals.approve", "--id", "nope")
    assert r.returncode == 1 and "no approval" in r.stderr


async def test_wait_timeout_exit_code(daemon_factory: DaemonFactory) -> None:
    def never(reg: Registry, rt: Runtime) -> None:
        rt.conditions.add("never", "a condition that never holds", lambda s: False)

    d = await daemon_factory(registrars=[never])
    base = ["--rpc-url", d.endpoint.rpc_url, "--token", d.endpoint.token]
    started = time.monotonic()
    assert await ctl_run([*base, "wait", "never", "--timeout", "0.5"]) == 4
    assert time.monotonic() - started < 10
    assert await ctl_run([*base, "wait", "daemon-ready", "--timeout", "5"]) == 0


async def test_global_options_anywhere(
    daemon: InProcessDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = daemon.endpoint.rpc_url, daemon.endpoint.token

    async def out(*argv: str) -> str:
        assert await ctl_run(list(argv)) == 0
        return capsys.readouterr().out

    # The same snapshot both ways. A service may still be settling (a new seq) between the two
    # reads; then read both again: the daemon changes only when something happens.
    for _ in range(20):
        before = json.loads(await out("--rpc-url", url, "--token", token, "--json", "status"))
        after = json.loads(await out("status", "--json", f"--rpc-url={url}", "--token", token))
        if after["seq"] == before["seq"]:
            break
    for snap in (before, after):
        del snap["daemon"]["uptime_s"]  # the daemon's age at each read
    assert after == before and after["seq"] >= 1

    # A generic command: --json after it gives the compact JSON, not the indented text.
    expected = await out("--rpc-url", url, "--token", token, "--json", "system.version")
    got = await out("system.version", "--json", "--rpc-url", url, f"--token={token}")
    assert got == expected and got.count("\n") == 1
    r = json.loads(
        await out("--rpc-url", url, "--token", token, "logs", "tail", "--lines", "2", "--json")
    )
    assert len(r["records"]) <= 2

    # `--` ends option scanning: the --json after it is the command's, and status has none.
    with pytest.raises(UsageError, match="unexpected arguments: --json"):
        await ctl_run(["--rpc-url", url, "--token", token, "status", "--", "--json"])


async def test_a_commands_own_option_wins_over_a_global_one(
    daemon_factory: DaemonFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    def echo(reg: Registry, rt: Runtime) -> None:
        @reg.command("test.echo")
        async def test_echo(home: str, json: bool = False) -> dict[str, Any]:
            """Return its arguments (a command whose options share global options' names)."""
            return {"home": home, "json": json}

    d = await daemon_factory(registrars=[echo])
    url, token = d.endpoint.rpc_url, d.endpoint.token
    argv = ["test.echo", "--home", "elsewhere", "--json", "--rpc-url", url, "--token", token]
    assert await ctl_run(argv) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == {"home": "elsewhere", "json": True}
    assert printed.count("\n") > 1  # the command took --json: autopilotctl printed text


def test_wait_covers_the_daemons_start(tmp_path: Path) -> None:
    home = tmp_path / "h"
    waiter = subprocess.Popen(
        [str(BIN / "autopilotctl"), "--home", str(home), "wait", "daemon-ready", "--timeout", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with (tmp_path / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen(
            [str(BIN / "autopilotd"), "run", "--home", str(home)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        out, err = waiter.communicate(timeout=90)
        assert waiter.returncode == 0, (out, err, (tmp_path / "daemon.log").read_text())
        assert "daemon-ready: met" in out
        assert run_ctl("--home", str(home), "status").returncode == 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()


def test_wait_for_a_daemon_that_never_comes_up(tmp_path: Path) -> None:
    started = time.monotonic()
    r = run_ctl("--home", str(tmp_path / "nobody"), "wait", "daemon-ready", "--timeout", "1")
    assert r.returncode == 4, r.stderr
    assert "did not come up within 1 s" in r.stdout and "no manifest" in r.stdout
    assert 1 <= time.monotonic() - started < 30
    r = run_ctl(
        "--home", str(tmp_path / "nobody"), "wait", "daemon-ready", "--timeout", "0", "--json"
    )
    assert r.returncode == 4 and json.loads(r.stdout)["running"] is False


def test_sigterm_stops_cleanly(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    d = daemon_process(tmp_path / "h")
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert not d.paths.manifest_file.exists()


def test_second_daemon_on_same_home_refuses(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    import subprocess

    from support import BIN

    d = daemon_process(tmp_path / "h")
    r = subprocess.run(
        [str(BIN / "autopilotd"), "run", "--home", str(d.home)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 78 and "already runs" in r.stderr
    assert d.ctl("status").returncode == 0  # the first one is untouched


def test_ready_is_notified_after_the_manifest(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        d = daemon_process(tmp_path / "h", env={"NOTIFY_SOCKET": str(sock_path)})
        message = sock.recv(1024).decode()
        assert message == "READY=1"
        assert d.paths.manifest_file.exists()
        d.ctl("stop")
        assert sock.recv(1024).decode() == "STOPPING=1"
    assert d.wait_exit() == 0


def test_refuses_to_start_on_a_damaged_database(tmp_path: Path) -> None:
    import subprocess

    from support import BIN

    from autopilotd.paths import Paths

    paths = Paths.for_home(tmp_path / "h")
    paths.data_dir.mkdir(parents=True, mode=0o700)
    paths.database_file.write_bytes(b"garbage" * 1000)
    started = time.monotonic()
    r = subprocess.run(
        [str(BIN / "autopilotd"), "run", "--home", str(paths.home)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 78
    assert "refusing to start" in r.stderr and "backup" in r.stderr
    assert time.monotonic() - started < 30
    assert not paths.manifest_file.exists()


def test_sub_tools_parse_their_own_arguments() -> None:
    import subprocess

    from support import BIN

    for tool, expected in (("devnet", "open-channel"), ("relay", "--print-url")):
        r = subprocess.run(
            [str(BIN / "autopilotd"), tool, "--help"], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and expected in r.stdout, r.stderr
