"""Loaders of the panes whose data exists now: the snapshot, plus read commands.

Each returns plain JSON (the pane's JSON twin). None of them decides anything a command or
the snapshot does not already say: they select, order and label.
"""

from __future__ import annotations

import re
from typing import Any

from autopilotd.errors import AutopilotError
from autopilotd.wallet.commands import REVEAL_CONFIRMATION
from autopilotd.web.panes import View
from autopilotd.web.qr import qr_path
from autopilotd.web.tailnet import tailnet_status

BAD_STATES = ("failed", "degraded", "error")
HISTORY_PAGE = 25
FEED_SHOWN = 100
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
USERINFO_RE = re.compile(r"//[^/@\s]+@")


def alerts(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed service and every section in a degraded or error state, with what to do."""
    out: list[dict[str, Any]] = []
    for s in snapshot["services"]:
        if s["state"] == "failed":
            out.append(
                {
                    "source": f"service {s['name']}",
                    "state": s["state"],
                    "what": s["last_error"] or "it stopped",
                    "do": s["next_step"] or "read 'autopilotctl logs', then restart autopilotd",
                    "since": s["since"],
                }
            )
    for name, section in snapshot.items():
        if isinstance(section, dict) and section.get("state") in BAD_STATES:
            out.append(
                {
                    "source": name.replace("_", " "),
                    "state": section["state"],
                    "what": section.get("reason") or section.get("last_error") or "",
                    "do": section.get("next_step") or "read 'autopilotctl logs'",
                    "since": section.get("updated_at"),
                }
            )
    return out


def earning(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Whether this daemon can earn right now, in words, from the provider section."""
    wallet_ready = snapshot["wallet"]["state"] == "ready"
    provider = snapshot.get("provider")
    if provider is None:
        return {
            "possible": False,
            "why": "selling compute arrives with the earn loop; this build has no provider yet",
            "wallet_ready": wallet_ready,
        }
    online = provider.get("state") == "online"
    return {
        "possible": online and wallet_ready,
        "why": provider.get("reason") or provider.get("state"),
        "wallet_ready": wallet_ready,
    }


async def hud(v: View) -> dict[str, Any]:
    s = v.snapshot
    return {
        "seq": s["seq"],
        "daemon": s["daemon"],
        "wallet": s["wallet"],
        "provider": s.get("provider"),
        "alerts": len(alerts(s)),
        "earning": earning(s),
    }


async def wallet(v: View) -> dict[str, Any]:
    before = _int(v.query.get("before_seq"))
    page = await v.call("wallet.history", {"limit": HISTORY_PAGE, "before_seq": before})
    return {
        "wallet": v.snapshot["wallet"],
        "history": page["payments"],
        "next_before_seq": page["next_before_seq"],
        "before_seq": before,
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


async def _receipt(v: View, payment_hash: str) -> dict[str, Any]:
    """Has this invoice been paid? The ledger holds a row for it only once it is."""
    try:
        row = await v.call("wallet.payment", {"payment_hash": payment_hash})
    except AutopilotError:
        return {"payment_hash": payment_hash, "paid": False, "status": "waiting"}
    return {
        "payment_hash": payment_hash,
        "paid": row["status"] == "succeeded",
        "status": row["status"],
        "amount_sats": row["amount_sats"],
    }


async def identity_keys(v: View) -> dict[str, Any]:
    reveal = v.acted("wallet.reveal_mnemonic")
    words = reveal.result["mnemonic"].split() if reveal and reveal.error is None else None
    return {
        "identity": v.snapshot.get("identity"),
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
    return {"alerts": alerts(s), "earning": earning(s), "services": s["services"]}


async def sync_health(v: View) -> dict[str, Any]:
    store = await v.rt.store.settings()
    log = await v.call("logs.tail", {"lines": 1})
    return {
        "store": {**store, "path": str(v.rt.store.path)},
        "session_log": {"session": log["session"], "path": log["path"]},
        "nexus": v.snapshot.get("sync"),
    }


async def settings(v: View) -> dict[str, Any]:
    values = {k: _redact(val) for k, val in v.rt.config.public().items()}
    return {
        "settings": values,
        "editable": False,
        "config_file": str(v.rt.config.paths.config_file),
    }


async def tailnet(v: View) -> dict[str, Any]:
    return await tailnet_status()


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


def _redact(value: Any) -> Any:
    """Credentials inside URLs (user:password@) are not shown."""
    return USERINFO_RE.sub("//•••@", value) if isinstance(value, str) else value


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None
