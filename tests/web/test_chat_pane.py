"""The Autopilot Chat pane: the engine in words, recent threads, a picked thread's turns and
items, the message box posting turn.start, a thread started from the pane, and the actions'
cards: an approval answered through the web, a command's output and exit code, a file change's
diff and its Revert. What a workspace or a command holds is shown as text, never as markup the
page would act on."""

from __future__ import annotations

import hashlib
import html as html_lib
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from support import DaemonFactory
from support.bwrap import needs_bwrap
from support.chat import NOTES, PATCH_NOTES, asking, chat_daemon, ended, run_turn

from .conftest import WebClient

TAG_RE = re.compile(r"<[^>]+>")
HOSTILE = '<script>alert(1)</script><img src=x hx-get="/do/wallet.pay">'


def _text(html: str) -> str:
    return " ".join(html_lib.unescape(TAG_RE.sub(" ", html)).split())


async def test_the_pane_shows_threads_and_a_picked_thread_with_its_items(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "page.html").write_text(HOSTILE)
    d = await chat_daemon(daemon_factory)
    web = await web_login(d)
    _, html = await web.get("/pane/autopilot_chat")
    assert "No threads yet" in _text(html) and "commands" in _text(html)

    thread = await d.call("thread.start", {"workspace": str(ws), "title": HOSTILE})
    await run_turn(d, thread["id"], "/read page.html")
    _, html = await web.get(f"/pane/autopilot_chat?thread={thread['id']}")
    assert HOSTILE not in html and "<script>" not in html  # escaped, everywhere it shows
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3  # title twice, the file
    assert 'data-testid="chat-thread"' in html and f'data-thread="{thread["id"]}"' in html
    last_seq = (await d.call("thread.read", {"thread_id": thread["id"]}))["last_seq"]
    assert f'data-last-seq="{last_seq}"' in html  # where the page's stream of it starts
    assert re.search(r'data-event-types="[^"]*\bitem\.delta\b', html)
    text = _text(html)
    assert "You: /read page.html" in text and "read page.html · completed" in text
    assert HOSTILE in text  # the file's text, shown as text
    assert 'hx-post="/do/turn.start?pane=autopilot_chat"' in html


async def test_sending_a_message_runs_a_turn_and_shows_it_in_the_pane(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("a needle here\n")
    d = await chat_daemon(daemon_factory)
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(ws)})
    status, html = await web.do(
        "turn.start", {"thread_id": thread["id"], "input": "/ls"}, pane="autopilot_chat"
    )
    assert status == 200 and 'data-testid="chat-thread"' in html  # the thread stays open
    turn = (await d.call("thread.read", {"thread_id": thread["id"]}))["turns"][0]
    while turn["status"] == "running":
        turn = await d.call("turn.wait", {"turn_id": turn["id"]})
    _, html = await web.get(f"/pane/autopilot_chat?thread={thread['id']}")
    assert "notes.txt" in _text(html) and "turn 1: completed" in _text(html)

    status, html = await web.do(
        "turn.start", {"thread_id": "thr-nope", "input": "/ls"}, pane="autopilot_chat"
    )
    assert status == 200 and "no chat thread" in _text(html)  # said in the pane
    status, html = await web.do(
        "turn.start", {"thread_id": thread["id"], "input": "  "}, pane="autopilot_chat"
    )
    assert "the input is empty" in _text(html)


# -- actions: approvals, commands, file changes (with the real bubblewrap sandbox) ---------------

FORM_RE = re.compile(r'<form[^>]*hx-post="([^"]+)"[^>]*>(.*?)</form>', re.S)
HIDDEN_RE = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


async def _pane(web: WebClient, thread_id: str) -> str:
    status, html = await web.get(f"/pane/autopilot_chat?thread={thread_id}")
    assert status == 200
    return html


def _card(html: str, item_id: str) -> str:
    """The rendered card of one item."""
    start = html.index(f'data-item="{item_id}"')
    end = html.find('data-testid="chat-item"', start)
    return html[start : end if end >= 0 else len(html)]


def _testids(html: str) -> list[str]:
    return re.findall(r'data-testid="([\w-]+)"', html)


async def _press(web: WebClient, html: str, testid: str) -> tuple[int, str]:
    """Send the form of the button `testid` as the page would: its hx-post address (with the
    thread it carries) and its hidden fields."""
    [(url, fields)] = [f for f in FORM_RE.findall(html) if f'data-testid="{testid}"' in f[1]]
    data = dict(HIDDEN_RE.findall(fields))
    headers = web.headers(**{"X-CSRF-Token": web.csrf})
    async with web.session.post(web.base + html_lib.unescape(url), data=data, headers=headers) as r:
        return r.status, await r.text()


@needs_bwrap
async def test_a_command_waits_for_its_approval_in_the_pane_then_shows_its_output(
    daemon_factory: DaemonFactory, user_workspace: Path, web_login: Any
) -> None:
    d = await chat_daemon(daemon_factory, chat_approval_timeout_s=60.0)
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "/run cat notes.txt"})
    item = await asking(d, turn["id"])
    card = pending = _card(await _pane(web, thread["id"]), item["id"])
    assert "APPROVAL NEEDED" in card and "Autopilot asks to run cat notes.txt" in _text(card)
    assert f'data-until="{item["body"]["approval"]["deadline"]}"' in card  # moved on by the page
    answers = ["chat-approve", "chat-approve-thread", "chat-deny"]
    assert [t for t in _testids(card) if t in answers] == answers
    assert card.count('hx-post="/do/approval.answer?pane=autopilot_chat&amp;thread=') == 3
    assert "chat-output" not in _testids(card) and "chat-running" not in _testids(card)

    status, html = await web.do(
        "approval.answer", {"item_id": item["id"], "decision": "approve"}, pane="autopilot_chat"
    )
    assert status == 200 and f'data-thread="{thread["id"]}"' in html  # the thread stays shown
    assert "chat-error" not in _testids(html)
    assert "APPROVED" in _text(_card(html, item["id"]))
    await ended(d, turn["id"])
    card = _card(await _pane(web, thread["id"]), item["id"])
    text = _text(card)
    assert "exit code 0 · succeeded" in text and "APPROVED" in text
    output = re.search(r'data-testid="chat-output">([^<]*)</pre>', card)
    assert output is not None and output.group(1) == NOTES.decode()
    assert "chat-approval" not in _testids(card)  # answered: no more buttons

    # a command of several parts cannot be allowed for the thread: no such button; denied
    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "/run true; rm x"})
    item = await asking(d, turn["id"])
    html = await _pane(web, thread["id"])
    assert [t for t in _testids(_card(html, item["id"])) if t in answers] == [
        "chat-approve",
        "chat-deny",
    ]
    status, html = await _press(web, html, "chat-deny")
    assert status == 200 and f'data-thread="{thread["id"]}"' in html
    await ended(d, turn["id"])
    text = _text(_card(await _pane(web, thread["id"]), item["id"]))
    assert "DECLINED (declined by the user)" in text
    assert "not run: the approval was declined" in text

    # a late answer is refused, said in the pane, and the thread stays shown (its address says so)
    status, html = await _press(web, pending, "chat-approve")
    assert 'data-testid="chat-error"' in html and f'data-thread="{thread["id"]}"' in html
    assert "approved already" in _text(html)


@needs_bwrap
async def test_a_file_change_shows_its_diff_and_reverts_from_the_pane(
    daemon_factory: DaemonFactory, user_workspace: Path, web_login: Any
) -> None:
    notes = user_workspace / "notes.txt"
    d = await chat_daemon(daemon_factory, chat_approval_timeout_s=60.0)
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": PATCH_NOTES})
    item = await asking(d, turn["id"])
    card = _card(await _pane(web, thread["id"]), item["id"])
    assert "Autopilot asks to change notes.txt as the diff shows" in _text(card)
    assert '<span class="diff-del">-second line</span>' in card
    assert '<span class="diff-add">+second line, changed</span>' in card
    assert "chat-approve-thread" not in _testids(card)  # a grant is for commands only
    assert "chat-revert" not in _testids(card)  # nothing to revert yet
    await web.do(
        "approval.answer", {"item_id": item["id"], "decision": "approve"}, pane="autopilot_chat"
    )
    await ended(d, turn["id"])
    assert notes.read_bytes() == NOTES.replace(b"second line", b"second line, changed")
    diff = await run_turn(d, thread["id"], "/diff")
    html = await _pane(web, thread["id"])
    assert '<span class="diff-add">+second line, changed</span>' in _card(
        html, diff["items"][1]["id"]
    )
    card = applied = _card(html, item["id"])
    before = hashlib.sha256(NOTES).hexdigest()
    assert f"{before[:6]}…{before[-6:]}" in card and "chat-revert" in _testids(card)
    assert 'hx-post="/do/item.revert?pane=autopilot_chat&amp;thread=' in card

    status, html = await web.do("item.revert", {"item_id": item["id"]}, pane="autopilot_chat")
    assert status == 200 and f'data-thread="{thread["id"]}"' in html
    assert notes.read_bytes() == NOTES
    card = _card(html, item["id"])
    assert "REVERTED" in card and "with Revert (item.revert)" in _text(card)
    assert "chat-revert" not in _testids(card)
    status, html = await _press(web, applied, "chat-revert")  # pressed again, on an old page
    assert "was reverted already" in _text(html) and f'data-thread="{thread["id"]}"' in html
    assert notes.read_bytes() == NOTES

    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": f"/revert {item['id']}"})
    asked = await asking(d, turn["id"])
    text = _text(_card(await _pane(web, thread["id"]), asked["id"]))
    assert f"revert the change of item {item['id']}" in text
    assert f"Autopilot asks to undo the file change of item {item['id']}" in text


@needs_bwrap
async def test_commands_output_and_diffs_are_shown_as_text(
    daemon_factory: DaemonFactory, user_workspace: Path, web_login: Any
) -> None:
    d = await chat_daemon(daemon_factory, chat_approval_timeout_s=60.0)
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(user_workspace)})
    hostile = "<script>alert(1)</script>"
    turn = await d.call(
        "turn.start", {"thread_id": thread["id"], "input": f"/run printf '%s' '{hostile}'"}
    )
    item = await asking(d, turn["id"])
    html = await _pane(web, thread["id"])
    assert hostile not in html and "&lt;script&gt;" in html
    assert _inert(html, "<script>") == 3  # the message, the command, the approval's question
    await web.do(
        "approval.answer", {"item_id": item["id"], "decision": "approve"}, pane="autopilot_chat"
    )
    await ended(d, turn["id"])
    turn = await d.call(
        "turn.start",
        {"thread_id": thread["id"], "input": PATCH_NOTES.replace("changed", hostile)},
    )
    await asking(d, turn["id"])
    html = await _pane(web, thread["id"])
    assert hostile not in html
    # the first message, its command and its output; the patch's message and its diff
    assert _inert(html, "<script>") == 5


class _Inert(HTMLParser):
    """Counts the text pieces holding `needle`, and checks each lies inside hx-disable."""

    VOID = frozenset({"input", "br", "img", "hr", "meta", "link"})

    def __init__(self, needle: str) -> None:
        super().__init__(convert_charrefs=True)
        self.needle = needle
        self.open: list[bool] = []  # per open element: has hx-disable
        self.found = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.open.append(any(name == "hx-disable" for name, _ in attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.needle in data:
            assert any(self.open), f"{data!r} is not inside hx-disable"
            self.found += 1


def _inert(html: str, needle: str) -> int:
    """How many text pieces of `html` hold `needle`, each escaped inside hx-disable."""
    parser = _Inert(needle)
    parser.feed(html)
    parser.close()
    return parser.found


async def test_a_thread_starts_from_the_pane(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    (tmp_path / "project").mkdir()
    d = await chat_daemon(daemon_factory)
    web = await web_login(d)
    _, html = await web.get("/pane/autopilot_chat")
    assert 'hx-post="/do/thread.start?pane=autopilot_chat"' in html
    status, html = await web.do(
        "thread.start",
        {"workspace": "project", "title": "mine", "sandbox_mode": "read-only"},
        pane="autopilot_chat",
    )
    assert status == 200 and "is not an absolute path" in _text(html)
    assert 'value="project"' in html and 'value="mine"' in html  # kept, to be corrected
    assert '<option value="read-only" selected>' in html

    status, html = await web.do(
        "thread.start",
        {"workspace": str(tmp_path / "project"), "title": "", "sandbox_mode": "read-only"},
        pane="autopilot_chat",
    )
    [thread] = (await d.call("thread.list"))["threads"]
    assert status == 200 and f'data-thread="{thread["id"]}"' in html  # the new thread, shown
    assert thread["title"] == "project" and thread["sandbox_mode"] == "read-only"
    badge = _text(html.split('data-testid="chat-badge"')[1].split("</p>")[0])
    assert badge == "> engine commands no model read-only"
    assert 'data-testid="chat-input"' in html and "/run" in html and "/patch" in html
    assert 'value="project"' not in html  # the form starts afresh


async def test_a_purchase_asks_the_owner_with_its_budget_and_links_to_network_requests(
    daemon_factory: DaemonFactory, tmp_path: Path, web_login: Any
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    d = await chat_daemon(daemon_factory)
    web = await web_login(d)
    thread = await d.call("thread.start", {"workspace": str(ws)})
    turn = await d.call("turn.start", {"thread_id": thread["id"], "input": "/buy 30 a <b>poem"})
    item = await asking(d, turn["id"])
    _, html = await web.get(f"/pane/autopilot_chat?thread={thread['id']}")
    card = _card(html, item["id"])
    assert "asks to spend" in _text(card) and "at most 30 sats" in _text(card)
    assert 'hx-post="/do/approval.answer_spend?pane=autopilot_chat' in card
    assert "approve_thread" not in card and "<b>poem" not in html
    status, html = await web.do(
        "approval.answer_spend",
        {"item_id": item["id"], "decision": "approve"},
        pane="autopilot_chat",
    )
    assert status == 200
    done = (await ended(d, turn["id"]))["items"][-1]
    assert done["status"] == "failed" and "buying needs relays" in done["body"]["error"]
    _, html = await web.get(f"/pane/autopilot_chat?thread={thread['id']}")
    assert 'data-open-pane="network_requests"' in html and "buying needs relays" in _text(html)
