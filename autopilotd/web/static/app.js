// The page's own behaviour: open panes, the command palette (Ctrl-K), live refresh over
// server-sent events, relative times, copy buttons. No inline script anywhere (the CSP
// forbids it).
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const hasHtmx = () => typeof window.htmx !== "undefined";

  // -- panes ------------------------------------------------------------------------------
  // A pane (and the scoreboard) is re-rendered when opened and, while open, on the signals
  // its data-live names: `snapshot` (a new snapshot) or `events` (a domain event); never on
  // the stream's tick. One request at a time: a refresh asked for while the pane's own
  // refresh or an action inside it is in flight is held until that one has answered, then
  // runs once. Requests that still meet (an action clicked during a refresh) queue behind each
  // other (hx-sync "queue all"): none is aborted, so every action's answer shows.
  const busy = (el) => el.classList.contains("htmx-request") || el.querySelector(".htmx-request");

  function refresh(el) {
    if (!hasHtmx() || !el || !el.dataset.live || el.dataset.editing) return;
    if (busy(el)) {
      el.dataset.stale = "1";
      return;
    }
    window.htmx.trigger(el, "ap:refresh");
  }

  document.addEventListener("htmx:afterRequest", (e) => {
    const pane = e.target.closest && e.target.closest("[data-live]");
    if (pane && pane.dataset.stale) {
      delete pane.dataset.stale;
      setTimeout(() => refresh(pane), 0);
    }
  });

  // A pane's kept fields (class "keep": a filter, the page of a list being read, a form being
  // filled in) go with its refresh, so that a re-render keeps them. Only the pane's own
  // refresh carries them, not the buttons and forms inside it.
  document.addEventListener("htmx:configRequest", (e) => {
    const el = e.detail.elt;
    if (e.detail.verb !== "get" || !el.dataset || !el.dataset.live) return;
    for (const input of el.querySelectorAll(".keep[name]")) {
      e.detail.parameters.set(input.name, input.value);
    }
  });

  function refreshLive(kind) {
    $$(`[data-live~="${kind}"]`).forEach((el) => {
      if (el.id === "hud" || el.classList.contains("open")) refresh(el);
    });
  }

  // the rail's buttons (not <body>, whose data-open names the pane shown first)
  const railButtons = $$(".rail [data-open]");

  function openPane(name) {
    const target = document.getElementById(`pane-${name}`);
    if (!target) return false;
    $$(".pane").forEach((p) => p.classList.toggle("open", p === target));
    railButtons.forEach((b) => b.classList.toggle("active", b.dataset.open === name));
    document.body.dataset.open = name;
    if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
    followChat();
    refresh(target);
    return true;
  }

  railButtons.forEach((b) => b.addEventListener("click", () => openPane(b.dataset.open)));
  // A link inside a pane that opens another pane (a chat's network request → Network Requests).
  document.addEventListener("click", (e) => {
    const link = e.target.closest && e.target.closest("a[data-open-pane]");
    if (link && openPane(link.dataset.openPane)) e.preventDefault();
  });

  // -- a chat thread, live ----------------------------------------------------------------
  // The open pane's chat thread (.chat-thread[data-thread], the Autopilot Chat pane's) is
  // followed over its own event stream, from the last_seq it was rendered with; each event
  // re-renders the pane, at most once per CHAT_REFRESH_MS, so that a burst of deltas is one
  // refresh. One stream for the thread shown: a re-render of the same thread keeps it (the
  // EventSource reconnects by itself, with Last-Event-ID); another thread, no thread, or the
  // pane closed closes it.
  const CHAT_REFRESH_MS = 200;
  let chat = null; // { thread, source, timer, last }

  function followChat() {
    const shown = $(".pane.open .chat-thread[data-thread]");
    const thread = shown ? shown.dataset.thread : null;
    if (chat && chat.thread === thread) return;
    if (chat) {
      chat.source.close();
      clearTimeout(chat.timer);
      chat = null;
    }
    if (!thread) return;
    const pane = shown.closest(".pane");
    const after = encodeURIComponent(shown.dataset.lastSeq || "0");
    const source = new EventSource(`/chat/${encodeURIComponent(thread)}/stream?after=${after}`);
    const followed = { thread, source, timer: null, last: 0 };
    const changed = () => {
      if (followed.timer !== null) return;
      const wait = Math.max(0, followed.last + CHAT_REFRESH_MS - Date.now());
      followed.timer = setTimeout(() => {
        followed.timer = null;
        followed.last = Date.now();
        refresh(pane);
      }, wait);
    };
    for (const type of (shown.dataset.eventTypes || "").split(" ").filter(Boolean)) {
      source.addEventListener(type, changed);
    }
    source.onerror = () => {
      // refused (the thread is gone, the session ended): the next render may try again
      if (source.readyState === EventSource.CLOSED && chat === followed) {
        clearTimeout(followed.timer);
        chat = null;
      }
    };
    chat = followed;
  }

  document.body.addEventListener("htmx:afterSwap", followChat);

  // -- command palette --------------------------------------------------------------------
  const dialog = $("#palette");
  const input = $("#palette-input");
  const items = $$("#palette-list li");
  let selected = 0;

  const shown = () => items.filter((li) => !li.hidden);

  function mark() {
    const list = shown();
    items.forEach((li) => li.classList.remove("selected"));
    if (list[selected]) {
      list[selected].classList.add("selected");
      list[selected].scrollIntoView({ block: "nearest" });
    }
  }

  function filter() {
    const words = input.value.toLowerCase().trim().split(/\s+/).filter(Boolean);
    items.forEach((li) => {
      const text = `${li.dataset.command} ${li.textContent}`.toLowerCase();
      li.hidden = !words.every((w) => text.includes(w));
    });
    const exact = items.findIndex((li) => li.dataset.command === input.value.trim());
    selected = exact >= 0 ? shown().indexOf(items[exact]) : 0;
    mark();
  }

  function openPalette() {
    input.value = "";
    filter();
    dialog.showModal();
    input.focus();
  }

  function run(li) {
    dialog.close();
    openPane(li.dataset.pane);
  }

  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "k") {
      e.preventDefault();
      if (dialog.open) dialog.close();
      else openPalette();
    }
  });
  input.addEventListener("input", filter);
  input.addEventListener("keydown", (e) => {
    const list = shown();
    if (e.key === "ArrowDown") {
      selected = Math.min(selected + 1, list.length - 1);
      mark();
      e.preventDefault();
    } else if (e.key === "ArrowUp") {
      selected = Math.max(selected - 1, 0);
      mark();
      e.preventDefault();
    } else if (e.key === "Enter" && list[selected]) {
      e.preventDefault();
      run(list[selected]);
    }
  });
  items.forEach((li) => li.addEventListener("click", () => run(li)));
  $("#palette-button").addEventListener("click", openPalette);

  // -- copy buttons -----------------------------------------------------------------------
  document.addEventListener("click", (e) => {
    const button = e.target.closest("[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.value || source.textContent).then(() => {
      button.textContent = "Copied ✓";
    });
  });

  // -- relative times ---------------------------------------------------------------------
  // "up 5 min 3 s", "3 s ago", "in 12 s": the server renders the text and, beside it, the
  // absolute time (<time data-since="unix seconds">, or data-until for a deadline); the page
  // moves the text on every second by itself, without a request (the daemon runs on this
  // computer: its clock is the browser's).
  function duration(seconds) {
    // the same words as the server's `duration` filter (autopilotd/web/render.py)
    const s = Math.floor(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function moveTimes() {
    const now = Date.now() / 1000;
    for (const el of $$("time[data-since]")) {
      const since = Number(el.dataset.since);
      if (!Number.isFinite(since)) continue;
      const text = duration(Math.max(0, now - since)) + ("ago" in el.dataset ? " ago" : "");
      if (el.textContent !== text) el.textContent = text;
    }
    for (const el of $$("time[data-until]")) {
      // the same words as the server's `until` filter
      const left = Number(el.dataset.until) - now;
      if (!Number.isFinite(left)) continue;
      const text = left <= 0 ? "passed" : `in ${duration(left)}`;
      if (el.textContent !== text) el.textContent = text;
    }
  }

  setInterval(moveTimes, 1000);

  // -- live -------------------------------------------------------------------------------
  const live = $("#live");
  function setLive(state, seq) {
    live.dataset.state = state;
    $(".live-text", live).textContent =
      { live: "LIVE", connecting: "CONNECTING", lost: "RECONNECTING" }[state] || state;
    if (seq !== undefined) $(".live-seq", live).textContent = `seq ${seq}`;
    live.title = `last signal ${new Date().toLocaleTimeString()}`;
    live.classList.remove("pulse");
    void live.offsetWidth; // restart the pulse animation
    live.classList.add("pulse");
  }

  let source = null;
  function connect() {
    source = new EventSource("/events/stream");
    const seqOf = (e) => JSON.parse(e.data).seq;
    source.addEventListener("hello", (e) => setLive("live", seqOf(e)));
    source.addEventListener("snapshot", (e) => {
      setLive("live", seqOf(e));
      refreshLive("snapshot");
    });
    source.addEventListener("activity", () => refreshLive("events"));
    source.addEventListener("tick", (e) => setLive("live", seqOf(e))); // only says "live"
    source.onerror = () => {
      setLive("lost");
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(checkSession, 2000);
      }
    };
  }

  async function checkSession() {
    try {
      const r = await fetch("/pane/hud", { headers: { Accept: "application/json" } });
      if (r.status === 401) {
        location.reload(); // logged out (or the daemon restarted): show the login page
        return;
      }
    } catch (err) {
      // the daemon is not answering; keep trying
    }
    connect();
  }

  // Edits in progress win over live refreshes. A form field changed in a pane (not a kept
  // one, below) marks the pane as being edited: it is not refreshed until the form is sent
  // (the action's answer replaces it) or the page reloads.
  for (const type of ["input", "change"]) {
    document.addEventListener(type, (e) => {
      const pane = e.target.closest && e.target.closest("[data-live]");
      if (pane && pane.dataset.live && e.target.name && !e.target.classList.contains("keep")) {
        pane.dataset.editing = "1";
      }
    }, true);
  }

  // A kept field marked data-refresh-on-input (the Activity Feed's filter) refreshes its pane
  // as the user types, once typing pauses: the pane's own refresh carries the kept fields, so
  // this is the same request as a live refresh. Listened for here, on the document, rather
  // than by htmx on the field: htmx wires up a re-rendered field only once the swap settles,
  // and what was typed before that would be lost.
  const typingPause = new WeakMap();
  for (const type of ["input", "search"]) {
    document.addEventListener(type, (e) => {
      const field = e.target;
      if (!field.matches || !field.matches(".keep[data-refresh-on-input]")) return;
      const pane = field.closest("[data-live]");
      if (!pane) return;
      clearTimeout(typingPause.get(pane));
      typingPause.set(pane, setTimeout(() => refresh(pane), type === "search" ? 0 : 300));
    });
  }

  // The field being typed in keeps its caret and selection across a live refresh, exactly:
  // htmx puts focus back but drops a selection that starts at 0, so the next key typed over a
  // selected value would land before it ("50" selected, "30" typed, "3050" sent). Kept form
  // fields are therefore text fields (a number field's selection cannot be read).
  let caret = null;

  // A live refresh sent before the user typed in a kept field (a filter, a form being filled
  // in) would put back the old value and drop what they typed: discard that answer and ask
  // again with the new one. The answer to an action (a POST) is always shown.
  document.body.addEventListener("htmx:beforeSwap", (e) => {
    const target = e.detail.target;
    if (!target || !target.dataset || !target.dataset.live) return;
    if ((e.detail.requestConfig && e.detail.requestConfig.verb) !== "get") {
      delete target.dataset.editing; // an action's answer: shown, and the form starts afresh
      return;
    }
    if (target.dataset.editing) {
      e.detail.shouldSwap = false;
      return;
    }
    // Only the pane's own refresh carries its kept fields; a button inside it that asks for
    // another page or row (`?before=…`, `?job=…`) is answered as it asked.
    const own = e.detail.requestConfig && e.detail.requestConfig.elt === target;
    const path = (e.detail.pathInfo && e.detail.pathInfo.finalRequestPath) || "";
    const sent = new URLSearchParams(path.split("?")[1] || "");
    for (const input of own ? target.querySelectorAll(".keep[name]") : []) {
      if ((sent.get(input.name) || "") !== input.value) {
        e.detail.shouldSwap = false;
        refresh(target);
        return;
      }
    }
    caret = null;
    const active = document.activeElement;
    const typing = active && active.id && target.contains(active);
    if (typing && typeof active.selectionStart === "number") {
      const { id, selectionStart: start, selectionEnd: end, selectionDirection: dir } = active;
      caret = { target, id, start, end, dir };
    }
  });

  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (!caret || caret.target !== e.detail.target) return;
    const field = document.getElementById(caret.id);
    const { start, end, dir } = caret;
    caret = null;
    if (!field || !e.detail.target.contains(field) || !field.setSelectionRange) return;
    try {
      field.focus({ preventScroll: true });
      field.setSelectionRange(start, end, dir || "none");
    } catch (err) {
      // a field whose type has no selection (none of the kept ones)
    }
  });

  document.body.addEventListener("htmx:responseError", (e) => {
    if (e.detail.xhr && e.detail.xhr.status === 401) location.reload();
  });

  if (!hasHtmx()) $("#no-htmx").hidden = false;
  openPane(location.hash.slice(1)) || openPane(document.body.dataset.open);
  connect();
})();
