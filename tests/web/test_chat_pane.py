"""The Autopilot Chat pane: the engine in words, recent threads, a picked thread's turns and
items, and the message box posting turn.start. What a workspace holds is shown as text, never
as markup the page would act on."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path
from typing import Any

from support import DaemonFactory
from support.chat import chat_daemon, run_turn

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
