"""NIP-90 sandbox jobs (kind 5720): the request's format, its price, and the result's content.

Documented in docs/nostr.md. A request carries the job's files inline, base64 in `i` tags
(`["i", <base64>, "text", "", "file:<path>"]`; a file longer than one tag is several tags with
the same marker, in order), and names what to run with `param` tags: `entry` (one of the
files; required), `runtime` (`python` or `sh`; python by default), `args` (a JSON array of
strings) and the limits it asks (`timeout_s`, `cpu_s`, `memory_mb`, `processes`,
`file_size_mb`), each at most the provider's own. The result (kind 6720) is JSON: the outcome,
exit code, stdout and stderr (each capped), resource use, and every file the workspace held at
the end with its size and sha256 (small ones inline, base64).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autopilotd.nostr.events import compact_json
from autopilotd.nostr.nip90 import KIND_SANDBOX, JobInput, JobRequest

__all__ = ["KIND_SANDBOX", "SandboxSpec", "parse_result", "price_msat", "result_content"]
RUNTIMES = ("python", "sh")
LIMIT_PARAMS = ("timeout_s", "cpu_s", "memory_mb", "processes", "file_size_mb")
FILE_MARKER = "file:"
CHUNK = 768  # raw bytes per `i` tag: 1,024 characters of base64, the tag value cap
RESULT_OUTPUT_CAP = 16 << 10  # stdout and stderr each, in the result
INLINE_ARTIFACT = 4 << 10  # a file this small goes inline …
INLINE_TOTAL = 8 << 10  # … while the inline total stays under this
MAX_LISTED = 100  # files listed with their digests; the rest are counted
RESULT_MAX_BYTES = 48 << 10  # the content, so the result event stays under 64 KiB
PRICE_CPU_STEP_S = 10
PRICE_MEMORY_STEP_MB = 512


@dataclass(frozen=True)
class SandboxSpec:
    """What a buyer asks a provider to run."""

    entry: str
    files: Mapping[str, bytes]
    runtime: str = "python"
    args: Sequence[str] = ()
    limits: Mapping[str, float] = field(default_factory=dict)

    def inputs(self) -> list[JobInput]:
        out: list[JobInput] = []
        for path, data in self.files.items():
            chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
            for chunk in chunks:
                encoded = base64.b64encode(chunk).decode()
                out.append(JobInput(encoded, "text", marker=FILE_MARKER + path))
        return out

    def params(self) -> dict[str, str | int | float]:
        params: dict[str, str | int | float] = {"entry": self.entry, "runtime": self.runtime}
        if self.args:
            params["args"] = json.dumps(list(self.args))
        params.update(self.limits)
        return params


def spec_from_request(request: JobRequest) -> SandboxSpec | str:
    """The spec a validated request carries, or why it is not one (a short reason)."""
    files: dict[str, bytearray] = {}
    for item in request.inputs:
        if not (item.marker or "").startswith(FILE_MARKER):
            return "every input must be a file (marker file:<path>)"
        path = (item.marker or "")[len(FILE_MARKER) :]
        try:
            files.setdefault(path, bytearray()).extend(base64.b64decode(item.data, validate=True))
        except (binascii.Error, ValueError):
            return f"file {path!r} is not base64"
    params: dict[str, str] = {}
    for key, value in request.params:
        params[key] = value
    entry = params.get("entry")
    if not entry or entry not in files:
        return "param entry must name one of the files"
    runtime = params.get("runtime", "python")
    if runtime not in RUNTIMES:
        return f"runtime must be one of {', '.join(RUNTIMES)}"
    args: list[str] = []
    if "args" in params:
        try:
            parsed = json.loads(params["args"])
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
            return "param args must be a JSON array of strings"
        args = parsed
    limits: dict[str, float] = {}
    for name in LIMIT_PARAMS:
        if name in params:
            try:
                number = float(params[name])
            except ValueError:
                return f"param {name} must be a number"
            if not math.isfinite(number) or number <= 0:
                return f"param {name} must be a positive number"
            limits[name] = number
    return SandboxSpec(entry, {p: bytes(d) for p, d in files.items()}, runtime, tuple(args), limits)


def price_msat(base_sats: int, cpu_s: float, memory_mb: float) -> int:
    """The ask for a run with these limits: the base price for each started 10 CPU-seconds,
    doubled for each started 512 MiB of address space beyond the first."""
    cpu_steps = max(1, math.ceil(cpu_s / PRICE_CPU_STEP_S))
    memory_steps = max(1, math.ceil(memory_mb / PRICE_MEMORY_STEP_MB))
    return base_sats * 1000 * cpu_steps * memory_steps


def result_content(job: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    """A result's content from a sandbox job (`SandboxJob.to_json()`) and the small files'
    bytes (those `files` holds are inlined, in path order, while the total allows). It stays
    under `RESULT_MAX_BYTES` whatever the job printed: the output is cut further until it does.
    """
    cap = RESULT_OUTPUT_CAP
    while True:
        content = _result(job, files, cap)
        if len(content.encode()) <= RESULT_MAX_BYTES or cap < 64:
            return content
        cap //= 2


def _result(job: Mapping[str, Any], files: Mapping[str, bytes], cap: int) -> str:
    stdout, stderr = job.get("stdout", ""), job.get("stderr", "")
    truncated = bool(job.get("truncated")) or max(len(stdout), len(stderr)) > cap
    inline_left = INLINE_TOTAL
    listed = list(job.get("artifacts", []))
    artifacts: list[dict[str, Any]] = []
    for art in listed[:MAX_LISTED]:
        shown = {"path": art["path"], "size": art["size"], "sha256": art["sha256"]}
        data = files.get(art["path"])
        if data is not None and len(data) <= min(INLINE_ARTIFACT, inline_left):
            shown["data_b64"] = base64.b64encode(data).decode()
            inline_left -= len(data)
        artifacts.append(shown)
    return compact_json(
        {
            "outcome": job["state"],
            "exit_code": job.get("exit_code"),
            "stdout": stdout[:cap],
            "stderr": stderr[:cap],
            "truncated": truncated,
            "wall_s": job.get("wall_s"),
            "cpu_s": job.get("cpu_s"),
            "limits": job.get("limits", {}),
            "artifacts": artifacts,
            "artifacts_not_listed": max(0, len(listed) - MAX_LISTED),
        }
    )


def parse_result(content: str) -> dict[str, Any] | None:
    """A kind 6720 result's content as a dict, or None when it is not that format."""
    try:
        doc = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("artifacts"), list):
        return None
    if not isinstance(doc.get("outcome"), str):
        return None
    return doc
