"""settings.* and relays.* commands: change settings while the daemon runs, one path for all.

`settings.update` is the one way in; `relays.add` and `relays.remove` compute the new `relays`
value and go through it too. A change is checked by the rules `load_config` applies, written
into `config.toml` (other keys and comments kept), then applied: a setting declared "now" in
`Config` replaces the running value at once (`LiveConfig.apply`: the services that follow it
registered their listeners, this module calls none of them); one declared "restart" stays
pending, shown next to the running value, until autopilotd restarts. `rt.config` is always
what runs. A setting fixed by an `AUTOPILOTD_*` variable is not saved,
because the variable would win at the next start.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from autopilotd.config import (
    Config,
    editable_settings,
    env_overrides,
    save_settings,
    split_list,
)
from autopilotd.errors import UserError
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime

USERINFO_RE = re.compile(r"//[^/@\s]+@")


def redact(value: Any, name: str = "") -> Any:
    """Credentials are not shown: inside URLs (user:password@), or a token setting's value."""
    if name.endswith("_token") and value:
        return "•••"
    return USERINFO_RE.sub("//•••@", value) if isinstance(value, str) else value


class Settings:
    """This daemon's settings editor: what runs, what is saved for the next start."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pending: dict[str, Any] = {}
        """Settings saved this session that apply at restart, with their saved value."""

    def target(self) -> Config:
        """The config the next start would use, as far as this session changed it."""
        return dataclasses.replace(self.rt.config, **self.pending)

    def show(self) -> dict[str, Any]:
        running = self.rt.config
        locked = env_overrides()
        editable = [
            {
                "name": name,
                "value": redact(getattr(running, name)),
                "applies": applies,
                "pending": name in self.pending,
                "saved": redact(self.pending.get(name, getattr(running, name))),
                "locked_by": locked.get(name),
            }
            for name, applies in editable_settings().items()
        ]
        others = {
            k: redact(v, k) for k, v in running.public().items() if k not in editable_settings()
        }
        return {
            "config_file": str(running.paths.config_file),
            "editable": editable,
            "other": others,
        }

    def _check_model(self, name: str) -> None:
        """A chat model is chosen among those the local runtime serves now."""
        runtime = self.rt.state.current.local_runtime
        chat = [m.id for m in runtime.models if m.kind == "chat"]
        if name in chat:
            return
        if chat:
            raise UserError(f"psionic serves no chat model '{name}'; it serves: {', '.join(chat)}")
        raise UserError(
            f"cannot choose the model '{name}': the local runtime serves no chat model now "
            f"({runtime.state.value}: {runtime.reason})"
        )

    async def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Check, save, apply; see the module docstring."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            raise UserError("nothing to change: give at least one setting")
        editable = editable_settings()
        for name in changes:
            if name not in editable:
                raise UserError(f"'{name}' cannot be changed while autopilotd runs")
        base = self.target()
        candidate = base.updated(changes, "settings")
        changed = [n for n in editable if getattr(candidate, n) != getattr(base, n)]
        if "provider_model" in changed and candidate.provider_model:
            self._check_model(candidate.provider_model)
        locked = env_overrides()
        for name in changed:
            if name in locked:
                raise UserError(
                    f"'{name}' is set by the environment variable {locked[name]}, which would "
                    f"win at the next start: change or unset {locked[name]} instead"
                )
        result: dict[str, Any] = {"changed": changed, "applied": [], "restart": []}
        if not changed:
            return result
        save_settings(self.rt.config.paths.config_file, {n: getattr(candidate, n) for n in changed})
        now = [n for n in changed if editable[n] == "now"]
        later = [n for n in changed if editable[n] == "restart"]
        running = dataclasses.replace(self.rt.config, **{n: getattr(candidate, n) for n in now})
        for name in later:
            if getattr(candidate, name) == getattr(running, name):
                self.pending.pop(name, None)  # back to what runs: nothing waits for a restart
            else:
                self.pending[name] = getattr(candidate, name)
        await self.rt.live.apply(running)
        result.update(applied=now, restart=[n for n in later if n in self.pending])
        self.rt.events.publish("settings.changed", **result)
        return result


def register(reg: Registry, rt: Runtime) -> None:
    settings = Settings(rt)

    @reg.command("settings.show")
    async def settings_show() -> dict[str, Any]:
        """Show every setting as it runs now; the editable ones say when a change applies.

        An editable setting saved for the next start shows its saved value next to the one that
        runs. Credentials inside URLs are hidden.
        """
        return settings.show()

    @reg.command("settings.update", access="owner")
    async def settings_update(
        relays: str | None = None,
        provider_price_sats: int | None = None,
        provider_max_inflight: int | None = None,
        provider_model: str | None = None,
        nexus_url: str | None = None,
        wallet_network: str | None = None,
        wallet_jit_max_fee_sats: int | None = None,
    ) -> dict[str, Any]:
        """Change settings: checked, saved to config.toml, and applied.

        Relays (comma-separated ws:// URLs), the price, max in-flight (1 to 32 jobs at once,
        from the next job) and the chat model for jobs that name none (one psionic serves; ""
        for psionic's default) and the Nexus (an http(s) URL, "" for none; its relay joins the
        relays) and the most an LSP may take to open a just-in-time channel apply at once; the
        wallet network when autopilotd restarts. The
        answer lists which settings changed, which applied now and which wait for a restart.
        Owner only: this rewrites the owner's config.toml, and the wallet network decides where
        money lives.
        """
        return await settings.update(
            {
                "relays": relays,
                "provider_price_sats": provider_price_sats,
                "provider_max_inflight": provider_max_inflight,
                "provider_model": provider_model,
                "nexus_url": nexus_url,
                "wallet_network": wallet_network,
                "wallet_jit_max_fee_sats": wallet_jit_max_fee_sats,
            }
        )

    @reg.command("relays.add", access="owner")
    async def relays_add(url: str) -> dict[str, Any]:
        """Add a Nostr relay (ws:// or wss://): saved to config.toml and connected at once."""
        current = split_list(settings.target().relays)
        if url.strip() in current:
            raise UserError(f"relay '{url.strip()}' is already in the list")
        return await settings.update({"relays": ", ".join([*current, url.strip()])})

    @reg.command("relays.remove", access="owner")
    async def relays_remove(url: str) -> dict[str, Any]:
        """Stop using a Nostr relay: removed from config.toml and disconnected at once."""
        current = split_list(settings.target().relays)
        if url.strip() not in current:
            raise UserError(f"relay '{url.strip()}' is not in the list")
        return await settings.update({"relays": ", ".join(u for u in current if u != url.strip())})
