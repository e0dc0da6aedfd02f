"""Every pane of the web UI, in palette order, with the snapshot section each one renders.

Placeholders (chat) name the section their service will publish and say in
words what brings it; filling one in means publishing that section and writing its block.
"""

from __future__ import annotations

from autopilotd.web import sources
from autopilotd.web.panes import Pane

HUD = Pane("hud", "Scoreboard", "hud", sources.hud, live="snapshot", in_palette=False)

PANES: tuple[Pane, ...] = (
    Pane("autopilot_chat", "Autopilot Chat", "Autopilot", sources.autopilot_chat, live="snapshot"),
    Pane("setup", "Set Up Your Rig", "Autopilot", sources.setup),
    Pane(
        "go_online",
        "Go Online",
        "Earn",
        sources.go_online,
        live="snapshot",
    ),
    Pane(
        "provider_status",
        "Provider Status",
        "Earn",
        sources.provider_status,
        live="snapshot",
    ),
    Pane("tailnet_status", "Tailnet Status", "Network", sources.tailnet, live="open"),
    Pane(
        "job_inbox",
        "Job Inbox",
        "Earn",
        sources.job_inbox,
        live="snapshot",
    ),
    Pane(
        "active_job",
        "Active Job",
        "Earn",
        sources.active_job,
        live="snapshot",
    ),
    Pane(
        "job_history",
        "Job History",
        "Earn",
        sources.job_history,
        live="snapshot",
    ),
    Pane(
        "earnings_scoreboard",
        "Earnings Scoreboard",
        "Earn",
        sources.earnings_scoreboard,
        live="snapshot",
    ),
    Pane("wallet", "Wallet", "Wallet", sources.wallet, live="snapshot"),
    Pane("pay_invoice", "Pay Lightning Invoice", "Wallet", sources.pay_invoice),
    Pane("create_invoice", "Create Lightning Invoice", "Wallet", sources.create_invoice),
    Pane("receive_onchain", "Receive On-chain", "Wallet", sources.receive_onchain),
    Pane("send_onchain", "Send On-chain", "Wallet", sources.send_onchain),
    Pane("cash_out", "Cash Out", "Wallet", sources.cash_out),
    Pane("identity_keys", "Identity Keys", "Wallet", sources.identity_keys),
    Pane(
        "relay_connections",
        "Relay Connections",
        "Network",
        sources.relay_connections,
        live="snapshot",
    ),
    Pane("sync_health", "Sync Health", "System", sources.sync_health, live="open"),
    Pane("sandbox", "Sandbox", "System", sources.sandbox, live="snapshot"),
    Pane("finetune", "Fine-tuning", "Autopilot", sources.finetune, live="snapshot"),
    Pane(
        "network_requests",
        "Network Requests",
        "Network",
        sources.network_requests,
        live="snapshot",
    ),
    Pane("starter_jobs", "Starter Jobs", "Earn", sources.starter_jobs, live="snapshot"),
    Pane("activity_feed", "Activity Feed", "System", sources.activity_feed, live="events"),
    Pane(
        "alerts_recovery",
        "Alerts and Recovery",
        "System",
        sources.alerts_recovery,
        live="snapshot",
    ),
    Pane("settings", "Settings", "System", sources.settings, live="open"),
)

BY_NAME: dict[str, Pane] = {p.name: p for p in (HUD, *PANES)}
GROUPS: tuple[str, ...] = ("Earn", "Wallet", "Network", "Autopilot", "System")
DEFAULT_PANE = "go_online"
