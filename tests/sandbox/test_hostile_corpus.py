"""The hostile corpus (hostile.toml) against the bubblewrap sandbox: every case contained.

For each case: its end is one of those allowed, nothing it must not see shows in its output,
nothing changed outside its workspace, and no process of it is left on the machine. For each
transfer (uploads and downloads through a daemon's sandbox jobs): the refusal, the job's state
after it, and nothing written outside the workspace (nor, for a refused archive, inside it).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory
from support.streams import Zeros

from autopilotd.adapters.bwrap_sandbox import BwrapSandbox
from autopilotd.client import RpcError
from autopilotd.ports.sandbox import Limits, Outcome

DATA = tomllib.loads((Path(__file__).parent / "hostile.toml").read_text())
CORPUS = DATA["case"]
TRANSFERS = DATA["transfer"]
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
    manifest = tmp_path / "daemon" / "run" / "autopilotd.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"auth_token": "MANIFEST-TOKEN"}')
    outside = tmp_path / "outside"
    outside.mkdir()
    dirs = (tmp_path, secret.parent.parent, secret.parent, data.parent, data, manifest.parent)
    for path in (*dirs, outside):
        path.chmod(0o755)  # readable even to the sandbox's user: only isolation may stop it
    for path in (secret, seed, manifest):
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
        "manifest": str(manifest),
        "outside": str(outside),
        "port": str(port),
    }
    yield values, connected
    server.close()


@pytest.fixture
def workspace(sandbox_dir: Path) -> Path:
    """A workspace where the sandbox's user can reach it."""
    (sandbox_dir / "work").mkdir()
    return sandbox_dir / "work"


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


def archive(spec: dict[str, Any], values: dict[str, str]) -> bytes:
    out = io.BytesIO()
    if spec["kind"] == "zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for m in spec["members"]:
                with z.open(m["name"], "w") as f:
                    if "zeros_mb" in m:
                        shutil.copyfileobj(Zeros(m["zeros_mb"] << 20), f, 1 << 20)
                    else:
                        f.write(m["text"].encode())
        return out.getvalue()
    gz = spec["kind"] == "tar.gz"
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as tar:
        for m in spec["members"]:
            info = tarfile.TarInfo(m["name"].format(**values))
            data: Any = None
            if "symlink" in m:
                info.type, info.linkname = tarfile.SYMTYPE, m["symlink"].format(**values)
            elif "hardlink" in m:
                info.type, info.linkname = tarfile.LNKTYPE, m["hardlink"].format(**values)
            elif "zeros_mb" in m:
                info.size = m["zeros_mb"] << 20
                data = Zeros(info.size)
            else:
                text = m["text"].encode()
                info.size, data = len(text), io.BytesIO(text)
            tar.addfile(info, data)
    return out.getvalue()


@pytest.mark.parametrize("case", TRANSFERS, ids=[c["name"] for c in TRANSFERS])
async def test_the_transfer_is_refused(
    case: dict[str, Any], host: Any, daemon_factory: DaemonFactory, sandbox_dir: Path
) -> None:
    values, _ = host
    d = await daemon_factory(sandbox_dir=str(sandbox_dir))
    while (await d.call("sandbox.status"))["state"] == "starting":
        await asyncio.sleep(0.05)
    job = await d.call("sandbox.create", {"runtime": "sh"})
    jid = job["id"]

    async def call(method: str, params: dict[str, Any]) -> str:
        with pytest.raises(RpcError) as refused:
            await d.call(method, {"job_id": jid, **params})
        return str(refused.value)

    if "upload" in case:
        data = case["upload"]["text"].encode()
        path = case["upload"]["path"].format(**values)
        why = await call("sandbox.upload", {"path": path, "data_b64": _b64(data)})
    elif "archive" in case:
        data = archive(case["archive"], values)
        params = {"path": "", "data_b64": _b64(data), "extract": True}
        why = await call("sandbox.upload", params)
    else:
        plant = _b64(case["plant"].format(**values).encode())
        await d.call("sandbox.upload", {"job_id": jid, "path": "p.sh", "data_b64": plant})
        await d.call("sandbox.start", {"job_id": jid, "entry": "p.sh"})
        ended = await d.call("sandbox.wait", {"job_id": jid, "timeout_s": 20})
        assert ended["state"] == "succeeded", ended
        why = await call("sandbox.download", {"path": case["download"].format(**values)})
    assert case["refused"] in why, why
    assert "SECRET-SSH-KEY" not in why
    assert (await d.call("sandbox.get", {"job_id": jid}))["state"] == case["state"]
    for path in case.get("absent", []):
        assert not Path(path.format(**values)).exists(), path
    if case.get("empty"):
        assert list((sandbox_dir / jid / "work").iterdir()) == []


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_sandbox_says_plainly_where_it_is_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    why = BwrapSandbox().unavailable()
    assert why == "sandboxed runs are not supported on macOS yet (they need Linux)"
