"""First-run commands ("set up your rig"): each step of the onboarding pane is one command.

    setup.status           where the first run stands: each step, done or what to do
    setup.reveal_words     the wallet's words, once, with two positions to confirm
    setup.confirm_words    the two words: the backup is confirmed
    setup.restore_wallet   the owner's own words instead of the new seed (restarts)
    setup.choose_profile   the network profile, saved for the next start
    setup.finish           restart into the chosen network: the wallet starts

The words are shown only to the owner, only with the confirmation phrase, and never over MCP
(like wallet.reveal_mnemonic). What the daemon will use after the restart (network, Nexus,
relays, model) is read from config.toml exactly as the next start reads it.
"""

from __future__ import annotations

from typing import Annotated, Any

from autopilotd.codec import Bounds
from autopilotd.commands.wallet import REVEAL_CONFIRMATION
from autopilotd.config import Config, load_config, save_settings, split_list
from autopilotd.errors import UserError
from autopilotd.nostr.identity import identity_from_mnemonic
from autopilotd.paths import write_private_atomic
from autopilotd.profiles import PROFILES
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime
from autopilotd.wallet.seed import read_seed, seed_path
from autopilotd.wallet.setup import (
    backed_up,
    check_words,
    mark_backed_up,
    pick_positions,
    replace_unused_seed,
)


def _next_start(rt: Runtime) -> Config:
    """The configuration the next start will run (config.toml and the environment, now)."""
    return load_config(rt.config.paths)


def _status(rt: Runtime, positions: tuple[int, int] | None = None) -> dict[str, Any]:
    running = rt.config
    data_dir = running.paths.data_dir
    try:
        upcoming: Config | None = _next_start(rt)
        problem = None
    except UserError as exc:
        upcoming, problem = None, exc.message
    cfg = upcoming or running
    words_done = backed_up(data_dir)
    network_done = upcoming is not None and upcoming.wallet_network != "off"
    runtime = rt.state.current.local_runtime
    model_ready = runtime.has_model("chat")
    relays = list(cfg.relay_urls())
    steps = [
        {
            "id": "words",
            "done": words_done,
            "what": "the wallet's 24 words are its one backup",
            "do": None
            if words_done
            else "setup.reveal_words, write them down, then setup.confirm_words; or "
            "setup.restore_wallet with your own words",
        },
        {
            "id": "network",
            "done": network_done,
            "what": f"network profile '{cfg.network_profile or '(none)'}', wallet on "
            f"{cfg.wallet_network}",
            "do": None if network_done else problem or "setup.choose_profile",
        },
        {
            "id": "nexus_and_relays",
            "done": bool(relays),
            "what": f"Nexus {cfg.nexus_url or '(none)'}; relays {', '.join(relays) or '(none)'}",
            "do": None if relays else "add a relay (relays.add) or choose a profile with relays",
        },
        {
            "id": "model",
            "done": model_ready,
            "what": f"local inference: {cfg.runtime_mode}; now {runtime.state.value}: "
            f"{runtime.reason}",
            "do": None
            if model_ready
            else "choosing a profile sets runtime_mode = spawn (psionic with the packaged "
            "models); wait for it to load",
        },
    ]
    running_network = running.wallet_network != "off"
    if words_done and network_done and running_network:
        state = "done"
    elif words_done and network_done:
        state = "restart_needed"
    else:
        state = "needs_setup"
    return {
        "state": state,
        "steps": steps,
        "confirm_positions": list(positions) if positions and not words_done else None,
        "profile": cfg.network_profile,
        "next": "setup.finish restarts autopilotd into the chosen network"
        if state == "restart_needed"
        else None,
        "profiles": [
            {
                "name": p.name,
                "network": p.network,
                "nexus_url": p.nexus_url,
                "relays": list(p.relays),
                "lsp": p.lsp,
            }
            for p in PROFILES.values()
        ],
    }


def register(reg: Registry, rt: Runtime) -> None:
    asked: dict[str, tuple[int, int]] = {}

    @reg.command("setup.status")
    async def setup_status() -> dict[str, Any]:
        """Where the first run stands: each step (the words, the network, the Nexus and relays,
        a model), done or what to do next, and the network profiles to choose from."""
        return _status(rt, asked.get("positions"))

    @reg.command("setup.reveal_words", access="owner")
    async def setup_reveal_words(confirm: str) -> dict[str, Any]:
        """Show the new wallet's words once, to write down, with the two positions that
        setup.confirm_words asks for. Only before the backup is confirmed (later:
        wallet.reveal_mnemonic). confirm must be exactly: "I understand this shows my wallet's
        secret words". Never exposed over MCP."""
        if confirm != REVEAL_CONFIRMATION:
            raise UserError(f'to reveal the words, pass confirm="{REVEAL_CONFIRMATION}"')
        data_dir = rt.config.paths.data_dir
        if backed_up(data_dir):
            raise UserError(
                "the backup is already confirmed; wallet.reveal_mnemonic shows the words again"
            )
        words = read_seed(seed_path(data_dir)).split()
        asked["positions"] = pick_positions(len(words))
        rt.events.publish("wallet.mnemonic_revealed")
        return {"mnemonic": " ".join(words), "confirm_positions": list(asked["positions"])}

    @reg.command("setup.confirm_words", access="owner")
    async def setup_confirm_words(
        first: Annotated[str, Bounds(max_length=16)], second: Annotated[str, Bounds(max_length=16)]
    ) -> dict[str, Any]:
        """Confirm the backup: the words at the two positions setup.reveal_words named."""
        positions = asked.get("positions")
        if positions is None:
            raise UserError("reveal the words first (setup.reveal_words)")
        check_words(rt.config.paths.data_dir, positions, (first, second))
        mark_backed_up(rt.config.paths.data_dir, "confirmed")
        asked.clear()
        rt.events.publish("setup.words_confirmed")
        return _status(rt)

    @reg.command("setup.restore_wallet", access="owner")
    async def setup_restore_wallet(words: Annotated[str, Bounds(max_length=400)]) -> dict[str, Any]:
        """Restore a wallet from its 12 to 24 words instead of this home's new one, then
        restart (the Nostr identity derives from the words too). Only while the new wallet has
        never run and its words were not kept; the replaced words are kept aside."""
        replace_unused_seed(rt.config.paths.data_dir, words)
        npub = identity_from_mnemonic(read_seed(seed_path(rt.config.paths.data_dir))).public().npub
        rt.events.publish("setup.wallet_restored", npub=npub)
        rt.request_restart()
        return {"restored": True, "npub": npub, "restarting": True}

    @reg.command("setup.choose_profile", access="owner")
    async def setup_choose_profile(profile: str) -> dict[str, Any]:
        """Choose the network profile (regtest, signet, mutinynet, bitcoin): saved to
        config.toml for the next start, with psionic spawned by the daemon if inference was
        off. Refused, with the file unchanged, if the next start could not use it."""
        if profile not in PROFILES:
            raise UserError(f"no network profile '{profile}'; choose one of {', '.join(PROFILES)}")
        path = rt.config.paths.config_file
        before = path.read_bytes() if path.exists() else None
        values: dict[str, Any] = {"network_profile": profile}
        current = _next_start(rt)
        if current.runtime_mode == "off":
            values["runtime_mode"] = "spawn"
        save_settings(path, values)
        try:
            upcoming = _next_start(rt)
        except UserError as exc:
            if before is None:
                path.unlink()
            else:
                write_private_atomic(path, before)
            raise UserError(f"profile '{profile}' cannot be used here: {exc.message}") from None
        rt.events.publish("setup.profile_chosen", profile=profile)
        return {
            "profile": profile,
            "network": upcoming.wallet_network,
            "nexus_url": upcoming.nexus_url,
            "relays": list(split_list(upcoming.relays)),
            "runtime_mode": upcoming.runtime_mode,
            "applies": "restart",
        }

    @reg.command("setup.finish", access="owner")
    async def setup_finish() -> dict[str, Any]:
        """Restart into the chosen network: the wallet starts on it, then Go Online is one
        click away (its blockers say what remains)."""
        status = _status(rt)
        missing = [s["id"] for s in status["steps"][:2] if not s["done"]]
        if missing:
            raise UserError(f"not yet: {', '.join(missing)} (see setup.status)")
        rt.request_restart()
        return {"restarting": True}
