"""The hostile corpus (hostile.toml) against the bubblewrap sandbox: every case contained.

For each case: its end is one of those allowed, nothing it must not see shows in its output,
nothing changed outside its workspace, and no process of it is left on the machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from autopilotd.adapters.bwrap_sandbox import BwrapSandbox
from autopilotd.ports.sandbox import Limits, Outcome

CORPUS = tomllib.loads((Path(__file__).parent / "hostile.toml").read_text())["case"]
SANDBOX = BwrapSandbox()

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        SANDBOX.unavailable() is not None and not os.environ.get("CI"),
        reason=f"no sandbox here: {SANDBOX.unavailable()}",
    ),
]


def _running(fragment: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if fragment in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
async def host(tmp_path: Path) -> Any:
    """What a hostile job looks for on the host: secrets, the daemon's data, a listener."""
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("SECRET-SSH-KEY\n")
    data = tmp_path / "daemon" / "data"
    (data / "wallet").mkdir(parents=True)
    seed = data / "wallet" / "wallet.mnemonic"
    seed.write_text("abandon " * 23 + "art\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    for path in (tmp_path, secret.parent.parent, secret.parent, data.parent, data, outside):
        path.chmod(0o755)  # readable even to the sandbox's user: only isolation may stop it
    for path in (secret, seed):
        path.chmod(0o644)
    connected: list[bool] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(True)
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    values = {
        "secret": str(secret),
        "seed": str(seed),
        "data": str(data),
        "outside": str(outside),
        "port": str(port),
    }
    yield values, connected
    server.close()


@pytest.fixture
def workspace() -> Any:
    """A workspace where the sandbox's user can reach it (pytest's own folders are root's)."""
    base = Path(tempfile.mkdtemp(prefix="autopilotd-sandbox-test-"))
    base.chmod(0o711)
    (base / "work").mkdir()
    yield base / "work"
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
async def test_the_case_is_contained(case: dict[str, Any], host: Any, workspace: Path) -> None:
    values, connected = host
    if "sh" in case:  # each says it started: a sandbox that failed is no containment
        argv = ["/bin/sh", "-c", "echo RAN-INSIDE; " + case["sh"].format(**values)]
    else:
        code = "print('RAN-INSIDE', flush=True); " + case["py"].format(**values)
        argv = ["/usr/bin/python3", "-I", "-c", code]
    limits = Limits(**{"timeout_s": 10.0, **case.get("limits", {})})
    result = await SANDBOX.run(workspace, argv, limits)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert "RAN-INSIDE" in output, output[-500:]
    assert result.outcome.value in case["outcome"], (result, output[-500:])
    if "leak" in case:
        assert case["leak"] not in output, output[-500:]
    for path in case.get("absent", []):
        assert not Path(path.format(**values)).exists(), path
    if case.get("truncated"):
        assert result.truncated and len(result.stdout) + len(result.stderr) <= limits.output_bytes
    assert not connected  # nothing reached the host's listener
    if "survivor" in case:
        assert "LEFT-A-CHILD" in output
        assert _running(case["survivor"]) == []  # its PID namespace took the child along
    assert result.outcome is not Outcome.CANCELLED


async def test_a_run_sees_only_its_workspace_and_the_system(workspace: Path) -> None:
    (workspace / "input.txt").write_text("hello\n")
    result = await SANDBOX.run(
        workspace,
        ["/bin/sh", "-c", "cat input.txt; ls /; id -u; echo out > result.txt"],
        Limits(),
    )
    assert result.outcome is Outcome.SUCCEEDED and result.exit_code == 0
    lines = result.stdout.decode().split()
    assert lines[0] == "hello"
    assert set(lines[1:-1]) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc"} | {
        "sbin",
        "tmp",
        "usr",
        "work",
    }
    assert (workspace / "result.txt").read_text() == "out\n"
