"""buy.* and reports.* commands."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated, Any, Literal

from autopilotd.buyer.service import Buyer
from autopilotd.codec import Bounds
from autopilotd.commands.system import clamp_timeout
from autopilotd.errors import InvalidParams
from autopilotd.nostr.nip90 import KIND_FINETUNE, KIND_SANDBOX, KIND_TEXT_GENERATION, JobInput
from autopilotd.nostr.nip90_finetune import FLOAT_PARAMS, HASH_RE, INT_PARAMS, FinetuneSpec
from autopilotd.nostr.nip90_sandbox import LIMIT_PARAMS, SandboxSpec
from autopilotd.registry import Registry
from autopilotd.runtime.context import Runtime


def register(reg: Registry, rt: Runtime, buyer: Buyer) -> None:
    @reg.command("buy.submit", access="owner", moves_money=True, needs={"identity"})
    async def buy_submit(
        prompt: str,
        budget_sats: Annotated[int, Bounds(minimum=1)],
        kind: int = KIND_TEXT_GENERATION,
        providers: list[str] | None = None,
        timeout_s: Annotated[float, Bounds(5, 3600)] = 120.0,
        max_tokens: int | None = None,
        params: dict[str, str] | None = None,
        runtime: Literal["python", "sh"] = "python",
        files: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> dict[str, Any]:
        """Buy a job from the network: publish a request and pay the first provider that delivers.

        budget_sats is the most this request may cost; an invoice above it is never paid.
        providers (hex pubkeys) limits who may answer. params become the request's `param`
        tags (model, temperature; a sandbox job's limits: timeout_s, cpu_s, memory_mb …).
        With kind 5720 (a sandbox job, docs/nostr.md) the prompt is the script the provider
        runs with `runtime` and `args`, and `files` (path: base64) go with it into its
        workspace. With kind 5740 (a fine-tuning job, docs/finetune.md) the prompt is the
        training set, chat JSONL, or `sha256:<hex>` naming one sent to that provider before;
        `files` may add a `holdout` set (base64, or `sha256:<hex>`), and params set
        base_model, suffix, n_epochs, max_steps, learning_rate, lora_r, lora_alpha.
        Returns the request; follow it with buy.status or buy.wait.
        """
        inputs: list[JobInput] = []
        tags: dict[str, str | int | float] = dict(params or {})
        if kind == KIND_SANDBOX:
            spec = sandbox_spec(prompt, runtime, files or {}, args or [], tags)
            inputs, tags = spec.inputs(), spec.params()
        elif kind == KIND_FINETUNE:
            tuning = finetune_spec(prompt, files or {}, tags)
            inputs, tags = tuning.inputs(), tuning.params()
        row = await buyer.submit(
            kind,
            prompt,
            budget_sats,
            providers or [],
            timeout_s,
            max_tokens,
            inputs=inputs,
            params=tags,
        )
        return row.to_json()

    @reg.command("buy.status")
    async def buy_status(request_id: str) -> dict[str, Any]:
        """Show one of our requests: status, provider, result and payment hash."""
        return (await buyer.get(request_id)).to_json()

    @reg.command("buy.wait")
    async def buy_wait(request_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait (at most 25 s per call) until a request is done, failed or expired."""
        return (await buyer.wait(request_id, clamp_timeout(timeout_s))).to_json()

    @reg.command("buy.history")
    async def buy_history(limit: Annotated[int, Bounds(1, 500)] = 50) -> dict[str, Any]:
        """List our requests, newest first."""
        return {"requests": [r.to_json() for r in await buyer.requests.history(limit)]}

    @reg.command("reports.nip90_payments")
    async def nip90_payments(start: float, end: float) -> dict[str, Any]:
        """Payments we sent for NIP-90 jobs between start and end (UNIX seconds), with totals.

        From the wallet ledger (only what it records as sent), bound to our requests.
        """
        payments = await buyer.requests.nip90_payments(start, end)
        settled = [p for p in payments if p["status"] == "succeeded"]
        return {
            "payments": payments,
            "count": len(settled),
            "total_sats": sum(p["amount_msat"] for p in settled) // 1000,
            "fees_msat": sum(p["fee_msat"] or 0 for p in settled),
        }


def sandbox_spec(
    script: str,
    runtime: str,
    files: dict[str, str],
    args: list[str],
    params: dict[str, str | int | float],
) -> SandboxSpec:
    """A sandbox job's spec from buy.submit's arguments: the script is the entry file."""
    entry = "main.py" if runtime == "python" else "main.sh"
    decoded = {entry: script.encode()}
    for path, data in files.items():
        try:
            decoded[path] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParams(f"files: {path!r} is not base64") from None
    limits: dict[str, float] = {}
    for name, value in params.items():
        if name not in LIMIT_PARAMS:
            raise InvalidParams(f"params: a sandbox job takes only {', '.join(LIMIT_PARAMS)}")
        try:
            limits[name] = float(value)
        except ValueError:
            raise InvalidParams(f"params: {name} must be a number") from None
    return SandboxSpec(entry, decoded, runtime, tuple(args), limits)


def finetune_spec(
    train: str, files: dict[str, str], params: dict[str, str | int | float]
) -> FinetuneSpec:
    """A fine-tuning job's spec from buy.submit's arguments: the prompt is the training set
    (or its digest), `files` may add `holdout` (base64, or its digest)."""
    data: dict[str, bytes | None] = {}
    digests: dict[str, str] = {}
    given: dict[str, tuple[str, bool]] = {"train": (train, True)}
    for name, value in files.items():
        if name != "holdout":
            raise InvalidParams("files: a fine-tuning job takes only `holdout`")
        given[name] = (value, False)
    for name, (value, plain) in given.items():
        match = HASH_RE.fullmatch(value.strip())
        if match is not None:
            data[name], digests[name] = None, match.group(1)
            continue
        try:
            blob = value.encode() if plain else base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParams(f"files: {name!r} is not base64") from None
        data[name], digests[name] = blob, hashlib.sha256(blob).hexdigest()
    hyper: dict[str, int | float] = {}
    for name, number in params.items():
        if name in ("base_model", "suffix"):
            continue
        try:
            if name in INT_PARAMS:
                hyper[name] = int(number)
            elif name in FLOAT_PARAMS:
                hyper[name] = float(number)
            else:
                raise InvalidParams(
                    "params: a fine-tuning job takes base_model, suffix, "
                    + ", ".join([*INT_PARAMS, *FLOAT_PARAMS])
                )
        except ValueError:
            raise InvalidParams(f"params: {name} must be a number") from None
    base = params.get("base_model")
    suffix = params.get("suffix")
    return FinetuneSpec(
        data,
        digests,
        None if base is None else str(base),
        None if suffix is None else str(suffix),
        hyper,
    )
