"""Loaders of the panes whose data exists now: the snapshot, plus read commands.

Each returns plain JSON (the pane's JSON twin). None of them decides anything a command or
the snapshot does not already say: they select, order and label. What follows from several
sections (alerts, whether the daemon earns now, the milestone to celebrate) is the
snapshot's own `facts`.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from autopilotd.chat import approvals
from autopilotd.commands.wallet import REVEAL_CONFIRMATION
from autopilotd.config import split_list
from autopilotd.errors import AutopilotError
from autopilotd.store.chat_records import ApprovalStatus, EventType
from autopilotd.vocab import OPEN_ONCHAIN_STATUSES, JobStage, OnchainKind, PaymentStatus
from autopilotd.web.panes import Action, View
from autopilotd.web.qr import qr_path
from autopilotd.web.tailnet import tailnet_status

HISTORY_PAGE = 25
ONCHAIN_SHOWN = 10
FEED_SHOWN = 100
HASH_RE = re.compile(r"^[0-9a-f]{64}$")


async def hud(v: View) -> dict[str, Any]:
    s = v.snapshot
    return {
        "seq": s["seq"],
        "daemon": s["daemon"],
        "wallet": s["wallet"],
        "provider": s["provider"],
        "earnings": s["earnings"],
        "alerts": len(s["facts"]["alerts"]),
        "earning": s["facts"]["earning"],
        "celebrate": s["facts"]["celebrate"],
    }


# -- earn ------------------------------------------------------------------------------------

STAGES = (
    JobStage.RECEIVED,
    JobStage.ACCEPTED,
    JobStage.RUNNING,
    JobStage.DELIVERED,
    JobStage.PAID,
)
NEXT_EVENT = {
    JobStage.RECEIVED: "accept it: a kind 7000 'processing' goes to the buyer",
    JobStage.ACCEPTED: "run it on the local model",
    JobStage.RUNNING: "the model finishes; the result is published, then the invoice",
    JobStage.DELIVERED: "the buyer pays the invoice; it counts once the wallet reports it settled",
    JobStage.PAID: "nothing: paid, and counted in earnings",
    JobStage.DELIVERED_UNPAID: "nothing: the buyer did not pay (a late payment still counts)",
    JobStage.FAILED: "nothing: the job failed",
    JobStage.REJECTED: "nothing: the request was refused",
}


async def go_online(v: View) -> dict[str, Any]:
    s = v.snapshot
    return {
        "provider": s["provider"],
        "earning": s["facts"]["earning"],
        "relays_connected": s["facts"]["relays"]["connected"],
        "relays": s["facts"]["relays"]["total"],
    }


async def provider_status(v: View) -> dict[str, Any]:
    s = v.snapshot
    provider = s["provider"]
    since = provider["online_since"]
    runtime = s["local_runtime"]
    return {
        "provider": provider,
        "identity": s["identity"],
        "online_for_s": None if since is None else max(0.0, v.now - since),
        "models": runtime["models"],
        "runtime": {k: runtime[k] for k in ("state", "reason", "device", "dtype", "queue_depth")},
        "queue_depth": s["jobs"]["queue_depth"],
        "active": len(s["jobs"]["active"]),
        "degraded": provider["blockers"] if provider["state"] != "offline" else [],
    }


async def job_inbox(v: View) -> dict[str, Any]:
    s = v.snapshot
    jobs = s["jobs"]
    return {
        "online": s["provider"]["state"] == "online",
        "rows": jobs["inbox"],
        "rejections": sorted(jobs["rejections"].items(), key=lambda kv: (-kv[1], kv[0])),
        "rejected": sum(jobs["rejections"].values()),
        "queue_depth": jobs["queue_depth"],
    }


async def active_job(v: View) -> dict[str, Any]:
    """The job in progress (or, when none is, the last one) as a walk along its stages."""
    jobs = v.snapshot["jobs"]
    job = jobs["active"][0] if jobs["active"] else None
    current = job is not None
    if job is None:
        last = v.snapshot["jobs"]["last"]
        job = await v.call("jobs.get", {"request_id": last["request_id"]}) if last else None
    if job is None:
        return {"job": None, "current": False, "stages": [], "next": None, "others": 0}
    stage = job["stage"]
    reached = STAGES.index(stage) if stage in STAGES else STAGES.index(JobStage.DELIVERED)
    failed_at = None if stage in STAGES else stage
    return {
        "job": job,
        "current": current,
        "stages": [
            {
                "name": name,
                "done": i < reached or (i == reached and stage == JobStage.PAID),
                "now": i == reached and stage != JobStage.PAID and failed_at is None,
            }
            for i, name in enumerate(STAGES)
        ],
        "ended": failed_at,
        "next": NEXT_EVENT.get(stage),
        "others": max(0, len(jobs["active"]) - 1),
    }


async def job_history(v: View) -> dict[str, Any]:
    before = _float(v.query.get("before"))
    page = await v.call("jobs.history", {"limit": HISTORY_PAGE, "before": before})
    synced = await v.call("sync.history", {"limit": HISTORY_PAGE, "type": "job"})
    return {
        "jobs": page["jobs"],
        "next_before": page["next_before"],
        "before": before,
        # jobs known only from the user's relays (a restore, another daemon): history, not earnings
        "restored": [j for j in synced["items"] if j["restored"]],
    }


async def starter_jobs(v: View) -> dict[str, Any]:
    """Starter demand as the `starter` section has it; the lease timers are the Nexus's."""
    s = v.snapshot
    starter = s["starter"]
    budget = starter["budget"]
    left = None
    if budget:
        left = max(
            0,
            min(
                budget["reserve_cap_sats"] - budget["reserved_sats"],
                budget["daily_cap_sats"] - budget["paid_24h_sats"] - budget["reserved_sats"],
            ),
        )
    return {
        "starter": starter,
        "online": s["provider"]["state"] == "online",
        "offer": starter["offer"],
        "last": starter["last_offer"],
        "budget_left_sats": left,
    }


async def earnings_scoreboard(v: View) -> dict[str, Any]:
    s = v.snapshot
    e = s["earnings"]
    since = s["provider"]["online_since"]
    return {
        "earnings": e,
        "last_job": s["jobs"]["last"],
        "uptime_s": s["daemon"]["uptime_s"],
        "started_at": s["daemon"]["started_at"],
        "online_since": since,
        "online_for_s": None if since is None else max(0.0, v.now - since),
        "chart": sats_chart(e["series"]),
    }


CHART_W, CHART_H, CHART_PAD = 600, 160, 8


def sats_chart(series: list[list[float]]) -> dict[str, Any] | None:
    """Lifetime sats over time as an SVG polyline (points in the viewBox), or None if empty."""
    if not series:
        return None
    t0, t1 = series[0][0], series[-1][0]
    if t1 - t0 < 1.0:  # one credit (or all at once): start the line a moment before it
        t0 = t1 - 1.0
    top = max(p[1] for p in series) or 1
    w, h, pad = CHART_W, CHART_H, CHART_PAD

    def xy(t: float, sats: float) -> str:
        x = pad + (max(t, t0) - t0) / (t1 - t0) * (w - 2 * pad)
        y = h - pad - sats / top * (h - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    # a step line: earnings jump at each credit and stay flat between credits
    points: list[str] = [xy(t0, series[0][1])]
    for (_, prev), (t, sats) in itertools.pairwise(series):
        points += [xy(t, prev), xy(t, sats)]
    return {
        "width": w,
        "height": h,
        "points": " ".join(points),
        "area": f"{pad:.1f},{h - pad:.1f} " + " ".join(points) + f" {xy(t1, 0)}",
        "top_sats": int(top),
        "from": t0,
        "to": t1,
        "credits": max(0, len(series) - 1),
    }


async def network_requests(v: View) -> dict[str, Any]:
    submitted = v.acted("buy.submit")
    bought = submitted.result if submitted is not None and submitted.error is None else None
    typed: dict[str, Any] = dict(submitted.params) if submitted else dict(v.query)
    page = await v.call("buy.history", {"limit": HISTORY_PAGE})
    return {
        "buyer": v.snapshot["buyer"],
        "wallet": _wallet_brief(v),
        "requests": page["requests"],
        "submitted": bought,
        "error": submitted.error if submitted else None,
        # what the form shows: kept while typing across live refreshes, cleared once bought
        "form": {
            "prompt": "" if bought is not None else str(typed.get("prompt", "")),
            "budget_sats": str(typed.get("budget_sats") or 50),
            "timeout_s": str(typed.get("timeout_s") or 120),
        },
    }


async def wallet(v: View) -> dict[str, Any]:
    before = _int(v.query.get("before_seq"))
    page = await v.call("wallet.history", {"limit": HISTORY_PAGE, "before_seq": before})
    synced = await v.call("sync.history", {"limit": HISTORY_PAGE, "type": "pay"})
    return {
        "wallet": v.snapshot["wallet"],
        "history": page["payments"],
        "next_before_seq": page["next_before_seq"],
        "before_seq": before,
        "restored": [p for p in synced["items"] if p["restored"]],  # history, not balance
        "recovery": v.snapshot["recovery"],  # a restored wallet's old channels, swept back
    }


async def pay_invoice(v: View) -> dict[str, Any]:
    decoded = v.acted("wallet.decode")
    paid = v.acted("wallet.pay")
    act = decoded or paid
    return {
        "wallet": _wallet_brief(v),
        "bolt11": str(act.params.get("bolt11", "")) if act else "",
        "decoded": decoded.result if decoded and decoded.error is None else None,
        "payment": paid.result if paid and paid.error is None else None,
        "error": act.error if act else None,
    }


async def create_invoice(v: View) -> dict[str, Any]:
    made = v.acted("wallet.receive")
    invoice = made.result if made and made.error is None else None
    if invoice is not None:
        invoice = {**invoice, "qr": qr_path(invoice["bolt11"]).to_json()}
    wanted = (v.query.get("payment_hash") or "").lower()
    payment_hash = invoice["payment_hash"] if invoice else wanted if HASH_RE.match(wanted) else None
    return {
        "wallet": _wallet_brief(v),
        "invoice": invoice,
        "receipt": await _receipt(v, payment_hash) if payment_hash else None,
        "error": made.error if made else None,
        "params": made.params if made else {},
    }


async def receive_onchain(v: View) -> dict[str, Any]:
    made = v.acted("wallet.onchain_address")
    address = made.result if made and made.error is None else None
    if address is not None:
        address = {**address, "qr": qr_path(address["uri"]).to_json()}
    return {
        "wallet": _onchain_brief(v),
        "address": address,
        "error": made.error if made else None,
    }


async def send_onchain(v: View) -> dict[str, Any]:
    previewed = v.acted("wallet.onchain_preview")
    sent = v.acted("wallet.onchain_send")
    act = previewed or sent
    sends = (await v.call("wallet.onchain_sends", {"limit": ONCHAIN_SHOWN}))["sends"]
    return {
        "wallet": _onchain_brief(v),
        "params": act.params if act else {},
        "preview": previewed.result if previewed and previewed.error is None else None,
        "sent": sent.result if sent and sent.error is None else None,
        "error": act.error if act else None,
        "sends": [s for s in sends if s["kind"] == OnchainKind.SEND],
    }


async def cash_out(v: View) -> dict[str, Any]:
    previewed = v.acted("wallet.cash_out_preview")
    started = v.acted("wallet.cash_out")
    act = previewed or started
    sends = (await v.call("wallet.onchain_sends", {"limit": ONCHAIN_SHOWN}))["sends"]
    cash_outs = [s for s in sends if s["kind"] == OnchainKind.CASH_OUT]
    wanted = _int(v.query.get("id"))
    if started and started.error is None:
        current = started.result
    else:  # the one asked for by id (the progress poll), else one under way
        current = next((s for s in cash_outs if s["id"] == wanted), None) or next(
            (s for s in cash_outs if s["status"] in OPEN_ONCHAIN_STATUSES), None
        )
    return {
        "wallet": _onchain_brief(v),
        "params": act.params if act else {},
        "preview": previewed.result if previewed and previewed.error is None else None,
        "current": current,
        "finished": current is None or current["status"] not in OPEN_ONCHAIN_STATUSES,
        "error": act.error if act else None,
        "cash_outs": cash_outs,
    }


async def _receipt(v: View, payment_hash: str) -> dict[str, Any]:
    """Has this invoice been paid? The ledger holds a row for it only once it is."""
    try:
        row = await v.call("wallet.payment", {"payment_hash": payment_hash})
    except AutopilotError:
        return {"payment_hash": payment_hash, "paid": False, "status": "waiting"}
    return {
        "payment_hash": payment_hash,
        "paid": row["status"] == PaymentStatus.SUCCEEDED,
        "status": row["status"],
        "amount_sats": row["amount_sats"],
    }


async def setup(v: View) -> dict[str, Any]:
    """The first run: each step from setup.status, and what the last action returned."""
    reveal = v.acted("setup.reveal_words")
    words = reveal.result["mnemonic"].split() if reveal and reveal.error is None else None
    return {
        "status": await v.call("setup.status"),
        "confirm_phrase": REVEAL_CONFIRMATION,
        "mnemonic": words,
        "error": v.action.error if v.action else None,
        "restarting": bool(
            v.action
            and v.action.error is None
            and v.action.command in ("setup.finish", "setup.restore_wallet")
        ),
    }


async def identity_keys(v: View) -> dict[str, Any]:
    reveal = v.acted("wallet.reveal_mnemonic")
    words = reveal.result["mnemonic"].split() if reveal and reveal.error is None else None
    return {
        "identity": v.snapshot["identity"],
        "node_id": v.snapshot["wallet"]["node_id"],
        "confirm_phrase": REVEAL_CONFIRMATION,
        "mnemonic": words,
        "error": reveal.error if reveal else None,
    }


async def activity_feed(v: View) -> dict[str, Any]:
    wanted = (v.query.get("filter") or "").strip()[:64]
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await v.call("events.wait", {"after": after, "timeout_s": 0, "limit": 1000})
        events += page["events"]
        after = page["last_id"]
        if len(page["events"]) < 1000:
            break
    needle = wanted.lower()
    matching = [e for e in reversed(events) if not needle or needle in _haystack(e)]
    return {
        "filter": wanted,
        "events": matching[:FEED_SHOWN],
        "matching": len(matching),
        "total": len(events),
        "last_id": after,
        "kinds": sorted({e["name"].split(".")[0] for e in events}),
    }


def _haystack(event: dict[str, Any]) -> str:
    values = " ".join(f"{k}={val}" for k, val in event["fields"].items())
    return f"{event['name']} {values}".lower()


async def alerts_recovery(v: View) -> dict[str, Any]:
    s = v.snapshot
    return {
        "alerts": s["facts"]["alerts"],
        "earning": s["facts"]["earning"],
        "services": s["services"],
    }


async def sync_health(v: View) -> dict[str, Any]:
    store = await v.call("system.store")
    log = await v.call("logs.tail", {"lines": 1})
    return {
        "store": store,
        "session_log": {"session": log["session"], "path": log["path"]},
        # signed job events no relay has accepted yet (sent again when a relay connects)
        "outbox_waiting": v.snapshot["jobs"]["outbox_waiting"],
        "relays": v.snapshot["relays"],
        "history": v.snapshot["sync"],
        "synced": v.acted("sync.now"),
    }


SANDBOX_OPEN = ("created", "uploading", "running")  # a job that has not ended: Cancel ends it
SANDBOX_LIMITS = (  # each limit's name in words and its unit
    ("timeout_s", "wall clock", "s"),
    ("cpu_s", "CPU time", "s"),
    ("memory_mb", "memory", "MB"),
    ("processes", "processes", ""),
    ("file_size_mb", "file size", "MB"),
    ("open_files", "open files", ""),
    ("output_bytes", "output kept", "bytes"),
)


async def sandbox(v: View) -> dict[str, Any]:
    """Sandbox jobs as the `sandbox` section has them; the job picked (`?job=`, or the one just
    cancelled) in full from `sandbox.get`: its output and its workspace files to download."""
    s = v.snapshot["sandbox"]
    cancelled = v.acted("sandbox.cancel")
    wanted = str(cancelled.params.get("job_id", "")) if cancelled else v.query.get("job", "")
    job, missing = None, None
    if wanted:
        try:
            job = await v.call("sandbox.get", {"job_id": wanted})
        except AutopilotError as exc:
            missing = exc.message
    return {
        "state": s["state"],
        "reason": s["reason"],
        "runtimes": s["runtimes"],
        "limits": _limits(s["limits"]),
        "counts": s["counts"],
        "jobs": s["jobs"],
        "selected": wanted,
        "job": job,
        "job_limits": _limits(job["limits"]) if job else [],
        "cancellable": job is not None and job["state"] in SANDBOX_OPEN,
        "error": (cancelled.error if cancelled else None) or missing,
    }


def _limits(limits: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": name, "label": label, "value": limits[name], "unit": unit}
        for name, label, unit in SANDBOX_LIMITS
        if name in limits
    ]


FINETUNE_OPEN = frozenset({"validating_files", "queued", "running"})
CURVE_W, CURVE_H = 320, 120


def loss_curve(losses: list[tuple[int, float]]) -> dict[str, Any] | None:
    """The step losses as an SVG polyline's points in a CURVE_W × CURVE_H box (the lowest
    loss at the bottom), with the axes' ends to label; None with fewer than two steps."""
    if len(losses) < 2:
        return None
    steps = [s for s, _ in losses]
    values = [x for _, x in losses]
    lo, hi = min(values), max(values)
    span_x = (steps[-1] - steps[0]) or 1
    span_y = (hi - lo) or 1.0
    points = " ".join(
        f"{(s - steps[0]) / span_x * CURVE_W:.1f},{(hi - x) / span_y * CURVE_H:.1f}"
        for s, x in losses
    )
    return {
        "points": points,
        "width": CURVE_W,
        "height": CURVE_H,
        "first_step": steps[0],
        "last_step": steps[-1],
        "high": hi,
        "low": lo,
        "last": values[-1],
    }


async def finetune(v: View) -> dict[str, Any]:
    """Fine-tuning as the `finetune` section has it; the job picked (`?job=`, the one just
    acted on, or the newest) in full from `finetune.job`, with its loss curve; the tenants."""
    s = v.snapshot["finetune"]
    acted = v.acted("finetune.promote") or v.acted("finetune.cancel")
    wanted = str(acted.params.get("job_id", "")) if acted else v.query.get("job", "")
    wanted = wanted or (s["jobs"][0]["id"] if s["jobs"] else "")
    job, missing = None, None
    if wanted:
        try:
            job = await v.call("finetune.job", {"job_id": wanted})
        except AutopilotError as exc:
            missing = exc.message
    losses = [(int(step), float(loss)) for step, loss in job["losses"]] if job else []
    tenants = (await v.call("finetune.tenant.list"))["tenants"]
    return {
        "state": s["state"],
        "reason": s["reason"],
        "api_url": s["api_url"],
        "counts": s["counts"],
        "jobs": s["jobs"],
        "models": s["models"],
        "tenants": [t for t in tenants if t["id"] != "network"],
        "selected": wanted,
        "job": job,
        "curve": loss_curve(losses),
        "open": job is not None and job["status"] in FINETUNE_OPEN,
        "error": (acted.error if acted else None) or missing,
    }


async def settings(v: View) -> dict[str, Any]:
    """The editable settings as a form (each saying when it applies), the others read-only."""
    shown = await v.call("settings.show")
    saved = v.acted("settings.update")
    failed = saved is not None and saved.error is not None
    return {
        "config_file": shown["config_file"],
        "editable": shown["editable"],
        "settings": shown["other"],  # credentials in URLs already hidden by settings.show
        "chat_models": [
            m["id"] for m in v.snapshot["local_runtime"]["models"] if m["kind"] == "chat"
        ],
        "saved": saved.result if saved is not None and not failed else None,
        "error": saved.error if saved is not None else None,
        "typed": saved.params if saved is not None and failed else {},
    }


async def tailnet(v: View) -> dict[str, Any]:
    return await tailnet_status()


def _onchain_brief(v: View) -> dict[str, Any]:
    balance = v.snapshot["wallet"]["balance"] or {}
    return {
        **_wallet_brief(v),
        "lightning_sats": balance.get("lightning_sats"),
        "onchain_sats": balance.get("onchain_sats"),
        "onchain_spendable_sats": balance.get("onchain_spendable_sats"),
        "pending_sats": balance.get("pending_sats"),
    }


def _wallet_brief(v: View) -> dict[str, Any]:
    w = v.snapshot["wallet"]
    balance = w["balance"] or {}
    return {
        "state": w["state"],
        "reason": w["reason"],
        "next_step": w["next_step"],
        "network": w["network"],
        "spendable_sats": balance.get("spendable_sats"),
        "receivable_sats": balance.get("receivable_sats"),
    }


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


async def relay_connections(v: View) -> dict[str, Any]:
    """Each relay's health row, the relays configured but not (yet) in the pool, add/remove."""
    act = v.acted("relays.add") or v.acted("relays.remove")
    shown = await v.call("settings.show")
    relays = next(e for e in shown["editable"] if e["name"] == "relays")
    rows = {r["url"]: r for r in v.snapshot["relays"]}
    for url in split_list(relays["value"]):
        rows.setdefault(url, {"url": url, "state": "not started", "connected": False})
    typed = v.query.get("url") or (act.params.get("url", "") if act is not None else "")
    added = act is not None and act.command == "relays.add" and act.error is None
    return {
        "relays": [rows[url] for url in sorted(rows)],
        "locked_by": relays["locked_by"],
        "draft": "" if added else str(typed),
        "error": act.error if act is not None else None,
        "done": act.command if act is not None and act.error is None else None,
    }


CHAT_ACTIONS = ("turn.start", "thread.start", "approval.answer", "item.revert")


async def autopilot_chat(v: View) -> dict[str, Any]:
    """Chat threads as the `chat` section has them; the thread picked in full from
    `thread.read`, its actions as cards (approvals to answer, commands with their output, file
    changes with Revert), a message box, and a form that starts a thread. The thread picked is
    the one the action just done was about (a turn started on it, the thread just started, an
    approval answered or a change reverted in it), else `?thread=`, which the cards' buttons
    also carry so that a refused answer keeps its thread shown. The page follows the picked
    thread's events (/chat/<id>/stream, after its `last_seq`) and re-renders the pane on each
    of the `event_types`."""
    s = v.snapshot["chat"]
    act = v.action if v.action is not None and v.action.command in CHAT_ACTIONS else None
    wanted = _thread_of(act) or v.query.get("thread", "")
    thread, missing = None, None
    if wanted:
        try:
            thread = await v.call("thread.read", {"thread_id": wanted})
        except AutopilotError as exc:
            missing = exc.message
    return {
        "state": s["state"],
        "reason": s["reason"],
        "engine": await v.call("engine.status"),
        "threads": s["recent"],
        "running_turns": s["running_turns"],
        "selected": wanted,
        "thread": thread,
        "grantable": _grantable(thread),
        "event_types": " ".join(EventType),
        # a refused thread.start's form keeps what was typed, to be corrected
        "start": act.params if act and act.command == "thread.start" and act.error else {},
        "error": (act.error if act else None) or missing,
    }


def _thread_of(act: Action | None) -> str:
    """The thread a chat action was about ("" when it does not say: it was refused)."""
    if act is None:
        return ""
    if act.command == "turn.start":
        return str(act.params.get("thread_id", ""))
    if act.error is not None or not isinstance(act.result, dict):
        return ""
    return str(act.result.get("id" if act.command == "thread.start" else "thread_id", ""))


def _grantable(thread: dict[str, Any] | None) -> list[str]:
    """The items whose pending command may be allowed for the thread: one simple command
    (approval.answer refuses approve_thread for any other)."""
    return [
        item["id"]
        for turn in (thread["turns"] if thread else [])
        for item in turn["items"]
        if item["body"].get("approval", {}).get("status") == ApprovalStatus.PENDING
        and item["body"]["approval"].get("action") == "command"
        and len(approvals.prefixes(str(item["body"].get("command", "")))) == 1
    ]
