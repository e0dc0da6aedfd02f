"""The Sandbox pane: the sandbox's state and limits, recent jobs, one job's output and files,
Cancel, and the download route. A fake Sandbox stands in for bubblewrap: nothing really runs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html as html_lib
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from support import DaemonFactory, InProcessDaemon

from autopilotd.app import Adapters
from autopilotd.ports.sandbox import Limits, Outcome, RunResult
from autopilotd.web.views import attachment_name

from .conftest import WebClient

TAG_RE = re.compile(r"<[^>]+>")
HOSTILE = '<script>alert(1)</script><img src=x hx-get="/do/wallet.pay">'
WRITTEN = b"hello from the sandbox"


class FakeSandbox:
    """Runs nothing: writes a file (and a symlink out) into the workspace and says what a run
    printed; `hang.sh` runs until it is cancelled."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason
        self.runs: list[list[str]] = []

    def unavailable(self) -> str | None:
        return self.reason

    async def run(self, workspace: Path, argv: list[str], limits: Limits) -> RunResult:
        self.runs.append(argv)
        if "hang.sh" in argv:
            await asyncio.Event().wait()
        (workspace / "out").mkdir(exist_ok=True)
        (workspace / "out" / "result file.txt").write_bytes(WRITTEN)
        (workspace / "escape").symlink_to("/etc/passwd")
        return RunResult(Outcome.SUCCEEDED, 0, HOSTILE.encode(), b"a warning\n", True, 0.25, 0.125)


async def _sandbox_daemon(
    factory: DaemonFactory, tmp_path: Path, sandbox: FakeSandbox
) -> InProcessDaemon:
    d = await factory(adapters=Adapters(sandbox=sandbox), sandbox_dir=str(tmp_path / "sandbox"))
    deadline = time.monotonic() + 20
    while (await d.call("sandbox.status"))["state"] == "starting":
        assert time.monotonic() < deadline, "the sandbox service did not start"
        await asyncio.sleep(0.02)
    return d


async def _job(d: InProcessDaemon, entry: str = "job.sh", *, start: bool = True) -> dict[str, Any]:
    """A sh job with one uploaded file, started (and, unless it hangs, ended) when asked."""
    job: dict[str, Any] = await d.call("sandbox.create", {"runtime": "sh", "timeout_s": 5})
    data = base64.b64encode(b"echo hi\n").decode()
    await d.call("sandbox.upload", {"job_id": job["id"], "path": entry, "data_b64": data})
    if not start:
        return job
    await d.call("sandbox.start", {"job_id": job["id"], "entry": entry, "args": ["a b"]})
    if entry == "hang.sh":
        return job
    ended: dict[str, Any] = await d.call("sandbox.wait", {"job_id": job["id"], "timeout_s": 10})
    assert ended["state"] == "succeeded", ended
    return ended


def _text(html: str) -> str:
    return " ".join(html_lib.unescape(TAG_RE.sub(" ", html)).split())


def _download(web: WebClient, job_id: str, path: str, **headers: str) -> Any:
    url = f"{web.base}/sandbox/{job_id}/download"
    return web.session.get(url, params={"path": path}, headers=web.headers(**headers))


async def test_the_pane_shows_the_sandbox_ready_its_limits_and_recent_jobs(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    d = await _sandbox_daemon(daemon_factory, tmp_path, FakeSandbox())
    job = await _job(d)
    web = await web_login(d)
    status, html = await web.get("/pane/sandbox")
    assert status == 200
    text = _text(html)
    assert "<h2>Sandbox</h2>" in html and "READY" in text and "sandboxed runs are available" in text
    assert "wall clock 30 s" in text and "memory 512 MB" in text and "open files 256" in text
    assert "output kept 1.0 MiB stdout and stderr" in text
    assert 'data-testid="sandbox-jobs"' in html and f'data-job="{job["id"]}"' in html
    assert f"{job['id']} local sh succeeded 0 0.25 s 0.12 s" in text
    assert f'hx-get="/pane/sandbox?job={job["id"]}"' in html
    assert 'data-testid="sandbox-job"' not in html  # nothing picked: no job's details
    _, page = await web.get("/")
    rail = page[page.index('data-open="sync_health"') :]
    assert rail.index('data-open="sandbox"') < rail.index('data-open="activity_feed"')
    _, data = await web.get_json("/pane/sandbox")
    assert data["state"] == "ready" and [j["id"] for j in data["jobs"]] == [job["id"]]
    assert data["counts"] == {"succeeded": 1} and data["job"] is None


async def test_a_picked_job_shows_its_output_and_files_to_download(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    d = await _sandbox_daemon(daemon_factory, tmp_path, FakeSandbox())
    job = await _job(d)
    web = await web_login(d)
    _, html = await web.get(f"/pane/sandbox?job={job['id']}")
    text = _text(html)
    assert 'data-testid="sandbox-job"' in html and "SUCCEEDED" in text
    assert "runs job.sh , arguments a b" in text and "Output truncated" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "a warning" in text and 'data-testid="sandbox-cancel"' not in html
    digest = hashlib.sha256(WRITTEN).hexdigest()
    assert f"out/result file.txt {len(WRITTEN)} B {digest} Download" in text
    assert "escape" not in text  # a symlink is no artifact
    link = f'href="/sandbox/{job["id"]}/download?path=out/result%20file.txt"'
    assert link in html
    assert f'<input type="hidden" class="keep" name="job" value="{job["id"]}">' in html
    _, data = await web.get_json(f"/pane/sandbox?job={job['id']}")
    assert data["job"]["stdout"] == HOSTILE and data["cancellable"] is False
    _, html = await web.get("/pane/sandbox?job=sbx-nope")
    assert "no sandbox job &#39;sbx-nope&#39;" in html

    await d.call("sandbox.remove", {"job_id": job["id"]})
    _, html = await web.get(f"/pane/sandbox?job={job['id']}")
    assert 'data-testid="sandbox-removed"' in html and "can no longer be downloaded" in html
    assert digest in html and link not in html  # the digests stay, the links go


async def test_the_download_route_answers_the_bytes_as_an_attachment(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    d = await _sandbox_daemon(daemon_factory, tmp_path, FakeSandbox())
    job = await _job(d)
    web = await web_login(d)
    async with _download(web, job["id"], "out/result file.txt") as r:
        assert r.status == 200 and await r.read() == WRITTEN
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["Content-Disposition"] == 'attachment; filename="resultfile.txt"'
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Content-SHA256"] == hashlib.sha256(WRITTEN).hexdigest()


async def test_a_refused_download_answers_the_reason_and_no_bytes(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    d = await _sandbox_daemon(daemon_factory, tmp_path, FakeSandbox())
    job = await _job(d)
    web = await web_login(d)
    refused = {
        "missing.txt": (400, "download refused: no such file"),
        "escape": (400, "download refused"),  # a symlink to /etc/passwd
        "../../etc/passwd": (400, "download refused"),
        "": (400, "download refused"),
    }
    passwd = Path("/etc/passwd").read_bytes()[:64]
    for path, (want, message) in refused.items():
        async with _download(web, job["id"], path) as r:
            body = await r.read()
            assert r.status == want and message in html_lib.unescape(body.decode()), (path, body)
            assert r.headers["Content-Type"].startswith("text/html")
            assert "Content-Disposition" not in r.headers and "X-Content-SHA256" not in r.headers
            assert passwd not in body and WRITTEN not in body
    async with _download(web, "sbx-0000", "out/result file.txt") as r:
        assert r.status == 404 and WRITTEN not in await r.read()
    async with _download(web, job["id"], "missing.txt", Accept="application/json") as r:
        assert r.status == 400 and "no such file" in (await r.json())["error"]


async def test_the_download_route_needs_a_session(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    d = await _sandbox_daemon(daemon_factory, tmp_path, FakeSandbox())
    job = await _job(d)
    web = await web_login(d)
    url = f"{web.base}/sandbox/{job['id']}/download?path=out/result%20file.txt"
    cookie = f"autopilotd_session_{d.port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        for headers in ({}, {"Cookie": f"{cookie}={'x' * 43}"}):
            async with s.get(url, headers=web.headers(**headers)) as r:
                body = await r.read()
                assert r.status == 401 and WRITTEN not in body
                assert "autopilotctl web" in json.loads(body)["error"]
        async with s.get(url, headers={"Host": "evil.example"}) as r:
            assert r.status == 403 and WRITTEN not in await r.read()


async def test_an_unavailable_sandbox_says_why_plainly(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    sandbox = FakeSandbox("bubblewrap (bwrap) is not installed: 'apt-get install bubblewrap'")
    d = await _sandbox_daemon(daemon_factory, tmp_path, sandbox)
    web = await web_login(d)
    _, html = await web.get("/pane/sandbox")
    text = _text(html)
    assert 'data-testid="sandbox-unavailable"' in html and "UNAVAILABLE" in text
    assert (
        "This machine cannot run sandboxed code: bubblewrap (bwrap) is not installed: "
        "'apt-get install bubblewrap'." in text
    )
    assert "No sandbox jobs yet" in text
    _, data = await web.get_json("/pane/sandbox")
    assert data["state"] == "unavailable" and "bubblewrap" in data["reason"]


async def test_cancel_ends_a_created_job_cancelled(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    d = await _sandbox_daemon(daemon_factory, tmp_path, FakeSandbox())
    job = await _job(d, start=False)
    web = await web_login(d)
    _, html = await web.get(f"/pane/sandbox?job={job['id']}")
    assert 'hx-post="/do/sandbox.cancel?pane=sandbox"' in html
    assert f'<input type="hidden" name="job_id" value="{job["id"]}">' in html
    assert "Listed when the job ends" in _text(html)
    status, html = await web.do("sandbox.cancel", {"job_id": job["id"]}, pane="sandbox")
    assert status == 200 and 'data-testid="sandbox-job"' in html
    assert "CANCELLED" in _text(html) and 'data-testid="sandbox-cancel"' not in html
    assert (await d.call("sandbox.get", {"job_id": job["id"]}))["state"] == "cancelled"
    status, html = await web.do("sandbox.cancel", {"job_id": "sbx-nope"}, pane="sandbox")
    assert status == 200 and html.count("no sandbox job &#39;sbx-nope&#39;") == 1  # in the pane


async def test_cancel_kills_a_running_job(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    sandbox = FakeSandbox()
    d = await _sandbox_daemon(daemon_factory, tmp_path, sandbox)
    job = await _job(d, "hang.sh")
    web = await web_login(d)
    _, html = await web.get(f"/pane/sandbox?job={job['id']}")
    assert "RUNNING" in _text(html) and 'data-testid="sandbox-cancel"' in html
    status, html = await web.do("sandbox.cancel", {"job_id": job["id"]}, pane="sandbox")
    assert status == 200 and "CANCELLED" in _text(html)
    assert sandbox.runs == [["/bin/sh", "hang.sh", "a b"]]


def test_attachment_names_keep_only_safe_characters() -> None:
    assert attachment_name("out/result file (1).txt") == "resultfile1.txt"
    assert attachment_name('a/"x";\r\n.sh') == "x.sh"
    assert attachment_name("dir/..") == "download"
    assert attachment_name(".env") == "env"
    assert attachment_name("ünïcode/naïve.csv") == "nave.csv"
    assert attachment_name("") == "download"


async def test_in_the_browser_a_picked_job_stays_open_while_the_pane_refreshes(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """Pick a job (its output as text, never markup), see the list grow live with it still
    open, download a file, close it."""
    from support.browser import artifact, chromium  # skips here without Chromium

    d = await _sandbox_daemon(daemon_factory, tmp_path, FakeSandbox())
    job = await _job(d)
    async with chromium() as ctx:
        page = await ctx.new_page()
        await page.goto((await d.call("web.login_url"))["url"])
        await page.wait_for_selector("#live[data-state=live]", timeout=15_000)
        await page.click(".rail button[data-open=sandbox]")
        pane = page.locator("#pane-sandbox")
        await pane.locator(f"tr[data-job={job['id']}] button").click()
        stdout = pane.locator("[data-testid=sandbox-stdout]")
        await stdout.wait_for()
        assert await stdout.inner_text() == HOSTILE
        assert await pane.locator("img, script").count() == 0
        other = await _job(d, start=False)  # a new snapshot: the open pane is re-rendered
        await pane.locator(f"tr[data-job={other['id']}]").wait_for()
        picked = pane.locator("[data-testid=sandbox-job]")
        assert await picked.get_attribute("data-job") == job["id"]
        async with page.expect_download() as info:
            row = pane.locator("[data-testid=sandbox-artifacts] tr", has_text="result file.txt")
            await row.locator("[data-testid=sandbox-download]").click()
        download = await info.value
        assert download.suggested_filename == "resultfile.txt"
        assert Path(await download.path()).read_bytes() == WRITTEN
        await page.screenshot(path=artifact("pane-sandbox-job.png"), full_page=True)
        await picked.locator("button", has_text="Close").click()
        await picked.wait_for(state="detached")
