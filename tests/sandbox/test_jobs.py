"""Sandbox jobs through the control plane: create, upload, start, wait, get, download,
cancel, list; their states and limits; a restart ending a running job `interrupted` with no
process left; and the MCP client driving the whole of it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from support import BIN, DaemonFactory, DaemonProcess, InProcessDaemon, left_running
from support.bwrap import needs_bwrap

from autopilotd.client import RpcError
from autopilotd.ctl.args import UsageError
from autopilotd.ctl.main import run as ctl_run

pytestmark = needs_bwrap


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


async def sandbox_daemon(factory: DaemonFactory, root: Path, **settings: Any) -> InProcessDaemon:
    d = await factory(sandbox_dir=str(root), **settings)
    deadline = time.monotonic() + 20
    while (await d.call("sandbox.status"))["state"] != "ready":
        assert time.monotonic() < deadline, "the sandbox service did not get ready"
        await asyncio.sleep(0.05)
    return d


async def run_job(
    d: InProcessDaemon, files: dict[str, str], entry: str, runtime: str = "python", **limits: Any
) -> dict[str, Any]:
    job = await d.call("sandbox.create", {"runtime": runtime, **limits})
    for path, text in files.items():
        await d.call("sandbox.upload", {"job_id": job["id"], "path": path, "data_b64": b64(text)})
    await d.call("sandbox.start", {"job_id": job["id"], "entry": entry})
    while True:
        done: dict[str, Any] = await d.call("sandbox.wait", {"job_id": job["id"], "timeout_s": 20})
        if done["state"] not in ("created", "uploading", "running"):
            return done


async def test_a_job_runs_from_upload_to_download(
    daemon_factory: DaemonFactory, sandbox_dir: Path
) -> None:
    d = await sandbox_daemon(daemon_factory, sandbox_dir)
    script = (
        "import hashlib, sys\n"
        "data = open('input.bin', 'rb').read()\n"
        "open('out/digest.txt', 'w').write(hashlib.sha256(data).hexdigest())\n"
        "print('isolated', sys.flags.isolated, 'args', sys.argv[1:])\n"
    )
    job = await d.call("sandbox.create", {"runtime": "python", "timeout_s": 20, "cpu_s": 10})
    assert job["state"] == "created" and job["limits"]["timeout_s"] == 20
    assert job["limits"]["memory_mb"] == 512  # the setting, where the job asked nothing
    jid = job["id"]
    payload = os.urandom(100_000)
    await d.call("sandbox.upload", {"job_id": jid, "path": "job.py", "data_b64": b64(script)})
    uploaded = await d.call(
        "sandbox.upload", {"job_id": jid, "path": "input.bin", "data_b64": b64(payload)}
    )
    assert uploaded["files"][0]["sha256"] == hashlib.sha256(payload).hexdigest()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("out/.keep")
        tar.addfile(info, io.BytesIO(b""))
    await d.call(
        "sandbox.upload",
        {"job_id": jid, "path": "", "data_b64": b64(archive.getvalue()), "extract": True},
    )
    assert (await d.call("sandbox.get", {"job_id": jid}))["state"] == "uploading"
    started = await d.call("sandbox.start", {"job_id": jid, "entry": "job.py", "args": ["a b"]})
    assert started["state"] == "running"
    done = await d.call("sandbox.wait", {"job_id": jid, "timeout_s": 20})
    while done["state"] == "running":
        done = await d.call("sandbox.wait", {"job_id": jid, "timeout_s": 20})
    assert done["state"] == "succeeded", done
    assert done["exit_code"] == 0
    assert "isolated 1 args ['a b']" in done["stdout"]
    assert done["wall_s"] > 0 and done["cpu_s"] >= 0
    digest = hashlib.sha256(payload).hexdigest()
    artifacts = {a["path"]: a for a in done["artifacts"]}
    assert artifacts["out/digest.txt"]["sha256"] == hashlib.sha256(digest.encode()).hexdigest()
    got = await d.call("sandbox.download", {"job_id": jid, "path": "out/digest.txt"})
    assert base64.b64decode(got["data_b64"]).decode() == digest
    assert got["sha256"] == artifacts["out/digest.txt"]["sha256"]

    listed = await d.call("sandbox.list", {})
    assert [j["id"] for j in listed["jobs"]] == [jid] and "stdout" not in listed["jobs"][0]
    section = await d.call("sandbox.status")
    assert section["counts"] == {"succeeded": 1} and section["jobs"][0]["id"] == jid

    with pytest.raises(RpcError, match="can start only once"):
        await d.call("sandbox.start", {"job_id": jid, "entry": "job.py"})
    with pytest.raises(RpcError, match="uploads go in before start"):
        await d.call("sandbox.upload", {"job_id": jid, "path": "late.txt", "data_b64": b64("x")})


async def test_shell_jobs_limits_and_refusals(
    daemon_factory: DaemonFactory, sandbox_dir: Path
) -> None:
    d = await sandbox_daemon(daemon_factory, sandbox_dir, sandbox_timeout_s=10.0)
    done = await run_job(d, {"run.sh": "echo out; echo err >&2; exit 3"}, "run.sh", "sh")
    assert (done["state"], done["exit_code"]) == ("failed", 3)
    assert (done["stdout"], done["stderr"]) == ("out\n", "err\n")

    slow = await run_job(d, {"slow.sh": "sleep 30"}, "slow.sh", "sh", timeout_s=1)
    assert slow["state"] == "timed_out" and slow["exit_code"] is None
    assert "wall-clock limit" in slow["reason"]

    with pytest.raises(RpcError, match="timeout_s must be above 0 and at most 10"):
        await d.call("sandbox.create", {"timeout_s": 60})
    job = await d.call("sandbox.create", {"runtime": "sh"})
    for path in ("../escape.sh", "/etc/cron.d/x", "a/../../b", ""):
        with pytest.raises(RpcError, match="upload refused"):
            await d.call("sandbox.upload", {"job_id": job["id"], "path": path, "data_b64": "eA=="})
    with pytest.raises(RpcError, match="not base64"):
        await d.call("sandbox.upload", {"job_id": job["id"], "path": "x", "data_b64": "%%%"})
    with pytest.raises(RpcError, match=r"entry 'missing\.sh'"):
        await d.call("sandbox.start", {"job_id": job["id"], "entry": "missing.sh"})
    with pytest.raises(RpcError, match="no sandbox job"):
        await d.call("sandbox.get", {"job_id": "sbx-nope"})
    cancelled = await d.call("sandbox.cancel", {"job_id": job["id"]})
    assert cancelled["state"] == "cancelled"


async def test_a_planted_symlink_is_never_followed_by_a_download(
    daemon_factory: DaemonFactory, sandbox_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-OUTSIDE")
    d = await sandbox_daemon(daemon_factory, sandbox_dir)
    script = f"ln -s {secret} leak; ln -s /etc/passwd passwd; ln -s .. up; echo ok > real.txt"
    done = await run_job(d, {"plant.sh": script}, "plant.sh", "sh")
    assert done["state"] == "succeeded"
    assert {a["path"] for a in done["artifacts"]} == {"plant.sh", "real.txt"}  # links skipped
    for path in ("leak", "passwd", "up/secret.txt", "../../real.txt"):
        with pytest.raises(RpcError, match="download refused"):
            await d.call("sandbox.download", {"job_id": done["id"], "path": path})
    got = await d.call("sandbox.download", {"job_id": done["id"], "path": "real.txt"})
    assert base64.b64decode(got["data_b64"]) == b"ok\n"

    removed = await d.call("sandbox.remove", {"job_id": done["id"]})
    assert removed["removed_at"] and removed["state"] == "succeeded"
    assert not (sandbox_dir / done["id"]).exists()
    assert secret.read_text() == "SECRET-OUTSIDE"  # the links went, never what they named
    with pytest.raises(RpcError, match="the workspace does not exist"):
        await d.call("sandbox.download", {"job_id": done["id"], "path": "real.txt"})
    listed = (await d.call("sandbox.list", {}))["jobs"]
    assert [j["id"] for j in listed] == [done["id"]] and listed[0]["artifacts"]


async def test_cancel_kills_the_run_and_everything_it_started(
    daemon_factory: DaemonFactory, sandbox_dir: Path
) -> None:
    d = await sandbox_daemon(daemon_factory, sandbox_dir)
    marker = f"cancel-marker-{os.getpid()}-{time.monotonic_ns()}"
    job = await d.call("sandbox.create", {"runtime": "sh"})
    nap = f"python3 -c 'import time; time.sleep(300)' {marker}"
    script = f"({nap} &) ; {nap}"  # a child left behind, and the job's own process
    await d.call("sandbox.upload", {"job_id": job["id"], "path": "s.sh", "data_b64": b64(script)})
    await d.call("sandbox.start", {"job_id": job["id"], "entry": "s.sh"})
    deadline = time.monotonic() + 10
    while len(left_running(marker)) < 2:
        assert time.monotonic() < deadline, "the job's processes did not start"
        await asyncio.sleep(0.05)
    with pytest.raises(RpcError, match="cancel it before removing it"):
        await d.call("sandbox.remove", {"job_id": job["id"]})
    done = await d.call("sandbox.cancel", {"job_id": job["id"]})
    assert done["state"] == "cancelled" and done["reason"] == "cancelled"
    deadline = time.monotonic() + 5
    while left_running(marker):
        assert time.monotonic() < deadline, "a cancelled job's process outlived it"
        await asyncio.sleep(0.05)


def test_a_restart_ends_a_running_job_interrupted_and_leaves_no_process(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path, sandbox_dir: Path
) -> None:
    env = {"AUTOPILOTD_SANDBOX_DIR": str(sandbox_dir)}
    d = daemon_process(tmp_path / "h", env=env)
    marker = f"restart-marker-{os.getpid()}-{time.monotonic_ns()}"

    def ctl(*args: str) -> dict[str, Any]:
        out = d.ctl("--json", *args)
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    deadline = time.monotonic() + 20
    while ctl("sandbox.status")["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job = ctl("sandbox.create", "--runtime", "sh")
    script = b64(f"python3 -c 'import time; time.sleep(300)' {marker}")
    ctl("sandbox.upload", "--job-id", job["id"], "--path", "s.sh", "--data-b64", script)
    assert ctl("sandbox.start", "--job-id", job["id"], "--entry", "s.sh")["state"] == "running"
    deadline = time.monotonic() + 10
    while not left_running(marker):
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)

    d.proc.send_signal(signal.SIGKILL)  # a crash: nothing gets to clean up
    d.proc.wait(10)
    deadline = time.monotonic() + 10
    while left_running(marker):
        assert time.monotonic() < deadline, "the job's process outlived the daemon"
        time.sleep(0.05)

    d.paths.manifest_file.unlink()  # the dead daemon's, so the wait below is for the new one
    d = daemon_process(d.home, env=env)
    after = ctl("sandbox.get", "--job-id", job["id"])
    assert after["state"] == "interrupted"
    assert after["reason"] == "the daemon stopped while it ran" and after["ended_at"]


async def test_the_mcp_client_creates_uploads_starts_waits_and_downloads(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path, sandbox_dir: Path
) -> None:
    d = daemon_process(tmp_path / "h", env={"AUTOPILOTD_SANDBOX_DIR": str(sandbox_dir)})
    params = StdioServerParameters(
        command=str(BIN / "autopilotd"),
        args=["mcp", "--home", str(d.home), "--allow-control"],
        env={**os.environ},
    )

    async def session_run() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()

            async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
                result = await session.call_tool(name, args)
                assert not result.is_error, result.content
                out: dict[str, Any] = json.loads(result.content[0].text)  # type: ignore[union-attr]
                return out

            names = {t.name for t in (await session.list_tools()).tools}
            assert {"sandbox__create", "sandbox__upload", "sandbox__download"} <= names
            deadline = time.monotonic() + 20
            while (await call("sandbox__status", {}))["state"] != "ready":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            job = await call("sandbox__create", {"runtime": "python"})
            script = "open('result.txt', 'w').write(str(6 * 7))"
            await call(
                "sandbox__upload", {"job_id": job["id"], "path": "job.py", "data_b64": b64(script)}
            )
            await call("sandbox__start", {"job_id": job["id"], "entry": "job.py"})
            done = await call("sandbox__wait", {"job_id": job["id"], "timeout_s": 20})
            assert done["state"] == "succeeded", done
            got = await call("sandbox__download", {"job_id": job["id"], "path": "result.txt"})
            assert base64.b64decode(got["data_b64"]) == b"42"

    await asyncio.wait_for(session_run(), 120)


async def test_read_only_mcp_lists_sandbox_jobs_but_cannot_start_them(
    daemon_process: Callable[..., DaemonProcess], tmp_path: Path, sandbox_dir: Path
) -> None:
    d = daemon_process(tmp_path / "h", env={"AUTOPILOTD_SANDBOX_DIR": str(sandbox_dir)})
    params = StdioServerParameters(
        command=str(BIN / "autopilotd"), args=["mcp", "--home", str(d.home)], env={**os.environ}
    )

    async def tool_names() -> set[str]:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return {t.name for t in (await session.list_tools()).tools}

    names = await asyncio.wait_for(tool_names(), 120)
    assert {"sandbox__list", "sandbox__get", "sandbox__wait", "sandbox__download"} <= names
    assert not names & {"sandbox__create", "sandbox__upload", "sandbox__start", "sandbox__cancel"}


async def test_autopilotctl_uploads_a_local_file_and_saves_a_download(
    daemon_factory: DaemonFactory,
    sandbox_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = await sandbox_daemon(daemon_factory, sandbox_dir)
    where = ["--rpc-url", d.endpoint.rpc_url, "--token", d.endpoint.token, "--json"]

    async def ctl(*argv: str) -> dict[str, Any]:
        assert await ctl_run([*where, *argv]) == 0
        out: dict[str, Any] = json.loads(capsys.readouterr().out)
        return out

    script = tmp_path / "job.sh"
    script.write_text("printf 'made here' > out.txt\n")
    job = await ctl("sandbox", "create", "--runtime", "sh")
    sent = await ctl(
        "sandbox", "upload", "--job-id", job["id"], "--path", "job.sh", "--data-file", str(script)
    )
    assert sent["files"][0]["sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    await ctl("sandbox", "start", "--job-id", job["id"], "--entry", "job.sh")
    assert (await ctl("sandbox", "wait", "--job-id", job["id"]))["state"] == "succeeded"
    target = tmp_path / "got.txt"
    saved = await ctl(
        "sandbox", "download", "--job-id", job["id"], "--path", "out.txt", "--save", str(target)
    )
    assert target.read_bytes() == b"made here" and "data_b64" not in saved
    assert (saved["saved_to"], saved["saved_bytes"]) == (str(target), 9)
    with pytest.raises(UsageError, match=r"--data-file .*No such file"):
        await ctl_run(
            [
                *where,
                "sandbox",
                "upload",
                "--job-id",
                job["id"],
                "--path",
                "x",
                "--data-file",
                str(tmp_path / "none"),
            ]
        )
    with pytest.raises(UsageError, match="answers no file"):
        await ctl_run([*where, "sandbox", "get", "--job-id", job["id"], "--save", str(target)])
