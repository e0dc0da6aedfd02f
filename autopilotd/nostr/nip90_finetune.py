"""NIP-90 fine-tuning jobs (kind 5740): the request's format, its price, and the result's content.

Documented in docs/finetune.md and docs/nostr.md. A request carries its dataset, OpenAI's chat
fine-tuning JSONL, in `i` tags marked `dataset:train` (and optionally `dataset:holdout`):
either inline, base64 in order over as many tags as it needs (`["i", <base64>, "text", "",
"dataset:train"]`), or by content hash, one tag `["i", "sha256:<hex>", "text", "",
"dataset:train"]` naming a dataset the provider already holds (one this buyer sent before).
`param` tags set the training: `base_model`, `n_epochs`, `max_steps`, `learning_rate`,
`lora_r`, `lora_alpha`, `suffix`. The result (kind 6740) is JSON: the outcome, the job, the
fine-tuned model's id, the adapter's digest, the eval against the base, and where to fetch the
adapter from the provider with a key that opens that job's adapter and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autopilotd.nostr.events import compact_json
from autopilotd.nostr.nip90 import KIND_FINETUNE, JobInput, JobRequest

__all__ = ["KIND_FINETUNE", "FinetuneSpec", "parse_result", "price_msat", "result_content"]
SPLITS = ("train", "holdout")
MARKER = "dataset:"
CHUNK = 768  # raw bytes per `i` tag: 1,024 characters of base64, the tag value cap
INLINE_MAX = 40 << 10  # the inline datasets together, so the request stays under 64 KiB
PRICE_STEP_BYTES = 4096
HASH_RE = re.compile(r"sha256:([0-9a-f]{64})")
INT_PARAMS = {"n_epochs": (1, 20), "max_steps": (1, 2000), "lora_r": (1, 64)}
FLOAT_PARAMS = {"learning_rate": (1e-6, 1.0), "lora_alpha": (1.0, 256.0)}


@dataclass(frozen=True)
class FinetuneSpec:
    """What a buyer asks a provider to train. A split is its bytes (inline) or, when only its
    digest was sent, None with the digest in `digests`."""

    data: Mapping[str, bytes | None]
    digests: Mapping[str, str]
    base_model: str | None = None
    suffix: str | None = None
    hyperparameters: Mapping[str, int | float] = field(default_factory=dict)

    @classmethod
    def inline(cls, train: bytes, holdout: bytes | None = None, **kw: Any) -> FinetuneSpec:
        data = {"train": train} | ({"holdout": holdout} if holdout is not None else {})
        digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()}
        return cls(data, digests, **kw)

    def inputs(self) -> list[JobInput]:
        out: list[JobInput] = []
        for name in SPLITS:
            if name not in self.digests:
                continue
            blob = self.data.get(name)
            if blob is None:
                out.append(JobInput(f"sha256:{self.digests[name]}", "text", marker=MARKER + name))
                continue
            for i in range(0, max(1, len(blob)), CHUNK):
                encoded = base64.b64encode(blob[i : i + CHUNK]).decode()
                out.append(JobInput(encoded, "text", marker=MARKER + name))
        return out

    def params(self) -> dict[str, str | int | float]:
        params: dict[str, str | int | float] = dict(self.hyperparameters)
        if self.base_model:
            params["base_model"] = self.base_model
        if self.suffix:
            params["suffix"] = self.suffix
        return params

    @property
    def size(self) -> int:
        """The bytes to train on (a dataset sent by digest counts as what the provider holds,
        which the request cannot say: it is priced as one step)."""
        return sum(len(blob) if blob is not None else 0 for blob in self.data.values())


def spec_from_request(request: JobRequest) -> FinetuneSpec | str:
    """The spec a validated request carries, or why it is not one (a short reason)."""
    chunks: dict[str, bytearray] = {}
    hashed: dict[str, str] = {}
    for item in request.inputs:
        marker = item.marker or ""
        name = marker[len(MARKER) :] if marker.startswith(MARKER) else ""
        if name not in SPLITS:
            return "every input must be a dataset (marker dataset:train or dataset:holdout)"
        if item.data.startswith("sha256:"):
            match = HASH_RE.fullmatch(item.data)
            if match is None:
                return f"dataset {name}: a digest is sha256: and 64 lowercase hex digits"
            if name in hashed or name in chunks:
                return f"dataset {name} is given twice"
            hashed[name] = match.group(1)
            continue
        if name in hashed:
            return f"dataset {name} is given twice"
        try:
            chunks.setdefault(name, bytearray()).extend(base64.b64decode(item.data, validate=True))
        except (binascii.Error, ValueError):
            return f"dataset {name} is not base64"
    if "train" not in chunks and "train" not in hashed:
        return "a dataset:train input is required"
    if sum(len(c) for c in chunks.values()) > INLINE_MAX:
        return f"the inline datasets exceed {INLINE_MAX} bytes; send a digest instead"
    data: dict[str, bytes | None] = {name: bytes(blob) for name, blob in chunks.items()}
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in chunks.items()}
    for name, digest in hashed.items():
        data[name], digests[name] = None, digest
    params = dict(request.params)
    hyper: dict[str, int | float] = {}
    for name, (low, high) in INT_PARAMS.items():
        if name in params:
            try:
                number = int(params[name])
            except ValueError:
                return f"param {name} must be a whole number"
            if not low <= number <= high:
                return f"param {name} must be between {low} and {high}"
            hyper[name] = number
    for name, (lo, hi) in FLOAT_PARAMS.items():
        if name in params:
            try:
                value = float(params[name])
            except ValueError:
                return f"param {name} must be a number"
            if not (math.isfinite(value) and lo <= value <= hi):
                return f"param {name} must be between {lo:g} and {hi:g}"
            hyper[name] = value
    suffix = params.get("suffix")
    if suffix is not None and not re.fullmatch(r"[a-z0-9-]{1,32}", suffix):
        return "param suffix must be 1 to 32 characters a-z, 0-9 or -"
    return FinetuneSpec(data, digests, params.get("base_model"), suffix, hyper)


def price_msat(base_sats: int, spec: FinetuneSpec, held_bytes: int = 0) -> int:
    """The ask: the base price for each started 4 KiB of training data, per epoch.
    `held_bytes`: the size of the datasets the request names by digest, where the provider
    knows it (they are priced like the same data sent inline)."""
    steps = max(1, math.ceil((spec.size + held_bytes) / PRICE_STEP_BYTES))
    epochs = int(spec.hyperparameters.get("n_epochs", 3))
    return base_sats * 1000 * steps * max(1, epochs)


def result_content(job: Mapping[str, Any], fetch_url: str | None, key: str | None) -> str:
    """A result's content from a finished fine-tuning job (the tenant API's job object)."""
    return compact_json(
        {
            "outcome": job["status"],
            "job": job["id"],
            "fine_tuned_model": job.get("fine_tuned_model"),
            "base_model": job.get("model"),
            "adapter_digest": job.get("adapter_digest"),
            "trained_tokens": job.get("trained_tokens"),
            "eval": job.get("eval"),
            "error": job.get("error"),
            "fetch": {"url": fetch_url, "key": key} if fetch_url and key else None,
        }
    )


def parse_result(content: str) -> dict[str, Any] | None:
    """A kind 6740 result's content as a dict, or None when it is not that format."""
    try:
        doc = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("outcome"), str):
        return None
    if not isinstance(doc.get("job"), str):
        return None
    return doc
