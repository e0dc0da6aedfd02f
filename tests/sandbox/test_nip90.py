"""Sandbox jobs sold over NIP-90 (kind 5720), with the real provider and buyer and fakes at the
wallet and relay ports: a paid run, its price following the limits asked, refusals before
anything runs, and a machine that cannot isolate never advertising or taking the kind."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from support.market import Market, Peer

from autopilotd.adapters.bwrap_sandbox import BwrapSandbox
from autopilotd.nostr.identity import generate_identity
from autopilotd.nostr.intake import IntakePolicy, RequestParser
from autopilotd.nostr.nip90 import KIND_HANDLER, KIND_SANDBOX, JobRequest
from autopilotd.nostr.nip90_buyer import build_job_request
from autopilotd.nostr.nip90_sandbox import (
    CHUNK,
    SandboxSpec,
    parse_result,
    price_msat,
    spec_from_request,
)
from autopilotd.ports.sandbox import Limits, RunResult
from autopilotd.runtime.sections import ProviderState

bwrap_missing = BwrapSandbox().unavailable()
PRICE = 10  # provider_sandbox_price_sats, the default


@pytest.fixture
def market(tmp_path: Path) -> Market:
    return Market(tmp_path)


async def online(provider: Peer) -> None:
    await provider.call("provider.online")
    await provider.until(lambda s: s.provider.state is ProviderState.ONLINE)


async def wait_done(buyer: Peer, rid: str) -> dict[str, Any]:
    for _ in range(30):
        row: dict[str, Any] = await buyer.call("buy.wait", {"request_id": rid, "timeout_s": 5})
        if row["status"] in ("done", "failed", "expired"):
            return row
    raise AssertionError(f"request {rid} did not end")


def test_a_spec_round_trips_through_a_request_in_one_kib_tags() -> None:
    buyer, provider = generate_identity(), generate_identity()
    big = bytes(range(256)) * 20  # 5,120 bytes: seven tags of 768
    spec = SandboxSpec(
        "main.py",
        {"main.py": b"print(1)", "data/big.bin": big},
        "python",
        ("x", "y z"),
        {"cpu_s": 20.0, "memory_mb": 600.0},
    )
    event = build_job_request(
        buyer, KIND_SANDBOX, spec.inputs(), bid_msat=40_000, params=spec.params()
    )
    assert all(len(v) <= 1024 for t in event.tags for v in t)
    assert len([t for t in event.tags if t[0] == "i"]) == 1 + -(-len(big) // CHUNK)
    parser = RequestParser(provider, IntakePolicy())
    request = parser.parse(event, now=event.created_at)
    assert isinstance(request, JobRequest)
    assert spec_from_request(request) == spec
    # 20 CPU-seconds are two steps of 10, 600 MiB two steps of 512: four times the base
    assert price_msat(PRICE, 20, 600) == 4 * PRICE * 1000
    assert price_msat(PRICE, 1, 16) == PRICE * 1000


@pytest.mark.parametrize(
    ("inputs", "params", "why"),
    [
        ([("eA==", "file:a.py")], {"entry": "b.py"}, "entry must name one of the files"),
        ([("eA==", "")], {"entry": "a.py"}, "every input must be a file"),
        ([("!!", "file:a.py")], {"entry": "a.py"}, "is not base64"),
        ([("eA==", "file:a.py")], {"entry": "a.py", "runtime": "ruby"}, "runtime must be"),
        ([("eA==", "file:a.py")], {"entry": "a.py", "args": "[1]"}, "args must be a JSON"),
        ([("eA==", "file:a.py")], {"entry": "a.py", "cpu_s": "-1"}, "cpu_s must be a positive"),
    ],
)
def test_a_malformed_spec_says_why(
    inputs: list[tuple[str, str]], params: dict[str, str], why: str
) -> None:
    from autopilotd.nostr.nip90 import JobInput

    buyer, provider = generate_identity(), generate_identity()
    items = [JobInput(data, "text", marker=marker or None) for data, marker in inputs]
    event = build_job_request(buyer, KIND_SANDBOX, items, bid_msat=10_000, params=params)
    request = RequestParser(provider, IntakePolicy()).parse(event, now=event.created_at)
    assert isinstance(request, JobRequest)
    found = spec_from_request(request)
    assert isinstance(found, str) and why in found


@pytest.mark.skipif(bwrap_missing is not None, reason="bubblewrap cannot run here")
async def test_a_buyer_pays_for_a_sandbox_job(market: Market, sandbox_dir: Path) -> None:
    script = (
        "import hashlib, sys\n"
        "data = open('input.bin', 'rb').read()\n"
        "open('digest.txt', 'w').write(hashlib.sha256(data).hexdigest())\n"
        "print('hashed', len(data), sys.argv[1:])\n"
    )
    data = bytes(range(256)) * 40
    async with (
        market.peer("provider", sandbox_dir=str(sandbox_dir)) as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await provider.until(lambda s: s.sandbox.state == "ready")
        await online(provider)
        assert KIND_SANDBOX in provider.snapshot.provider.served_kinds
        row = await buyer.call(
            "buy.submit",
            {
                "kind": KIND_SANDBOX,
                "prompt": script,
                "files": {"input.bin": base64.b64encode(data).decode()},
                "args": ["--fast"],
                "params": {"cpu_s": "20", "timeout_s": "10"},
                "budget_sats": 2 * PRICE,
            },
        )
        done = await wait_done(buyer, row["request_id"])
        assert done["status"] == "done", done
        result = parse_result(done["result"])
        assert result is not None and result["outcome"] == "succeeded"
        assert result["stdout"] == f"hashed {len(data)} ['--fast']\n"
        assert result["limits"]["cpu_s"] == 20 and result["limits"]["timeout_s"] == 10
        digests = {a["path"]: a for a in result["artifacts"]}
        digest = hashlib.sha256(data).hexdigest()
        assert base64.b64decode(digests["digest.txt"]["data_b64"]).decode() == digest
        assert "data_b64" not in digests["input.bin"]  # the buyer's own file is not sent back
        job = await provider.job_until(done["request_id"], "paid")
        assert job["price_sats"] == 2 * PRICE  # 20 CPU-seconds: two steps of 10
        assert provider.snapshot.earnings.lifetime_sats == 2 * PRICE
        [ran] = (await provider.call("sandbox.list", {}))["jobs"]
        assert (ran["origin"], ran["request_id"], ran["state"]) == (
            "nip90",
            done["request_id"],
            "succeeded",
        )


@pytest.mark.skipif(bwrap_missing is not None, reason="bubblewrap cannot run here")
async def test_low_bids_limits_above_the_settings_and_climbing_paths_are_refused(
    market: Market, sandbox_dir: Path
) -> None:
    async with (
        market.peer("provider", sandbox_dir=str(sandbox_dir)) as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await provider.until(lambda s: s.sandbox.state == "ready")
        await online(provider)
        cheap = await buyer.call(
            "buy.submit",
            {
                "kind": KIND_SANDBOX,
                "prompt": "print(1)",
                "params": {"cpu_s": "30"},  # three steps: 30 sats asked
                "budget_sats": 2 * PRICE,
                "timeout_s": 5,
            },
        )
        greedy = await buyer.call(
            "buy.submit",
            {
                "kind": KIND_SANDBOX,
                "prompt": "print(1)",
                "params": {"memory_mb": "100000"},
                "budget_sats": 1000,
                "timeout_s": 5,
            },
        )
        climbing = await buyer.call(
            "buy.submit",
            {
                "kind": KIND_SANDBOX,
                "prompt": "print(1)",
                "files": {"../../escape.txt": base64.b64encode(b"x").decode()},
                "budget_sats": 1000,
                "timeout_s": 5,
            },
        )
        await provider.until(
            lambda s: (
                s.jobs.rejections.get("bid-below-minimum", 0) >= 1
                and s.jobs.rejections.get("malformed", 0) >= 2
            )
        )
        for rid in (cheap["request_id"], greedy["request_id"], climbing["request_id"]):
            assert await provider.job(rid) is None  # no job row, no invoice
        assert (await provider.call("sandbox.list", {}))["jobs"] == []  # nothing ran


class Refusing:
    """A machine where the sandbox cannot isolate a run."""

    def unavailable(self) -> str | None:
        return "user namespaces are disabled"

    async def run(self, workspace: Path, argv: list[str], limits: Limits) -> RunResult:
        raise AssertionError("nothing may run where the sandbox is unavailable")


async def test_where_the_sandbox_cannot_isolate_the_kind_is_neither_advertised_nor_taken(
    market: Market, sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autopilotd import app

    real_build = app.build

    def build(*args: Any, **kwargs: Any) -> Any:
        adapters = kwargs["adapters"]
        kwargs["adapters"] = app.Adapters(**{**adapters.__dict__, "sandbox": Refusing()})
        return real_build(*args, **kwargs)

    monkeypatch.setattr("support.market.build", build)
    async with (
        market.peer("provider", sandbox_dir=str(sandbox_dir)) as provider,
        market.peer("buyer", balance_msat=10_000_000) as buyer,
    ):
        await provider.until(lambda s: s.sandbox.state == "unavailable")
        await online(provider)
        await provider.until(lambda s: KIND_SANDBOX not in s.provider.served_kinds)
        handlers = [e for e in market.relays.published if e.kind == KIND_HANDLER]
        assert handlers and ["k", str(KIND_SANDBOX)] not in [list(t) for t in handlers[-1].tags]
        row = await buyer.call(
            "buy.submit",
            {"kind": KIND_SANDBOX, "prompt": "print(1)", "budget_sats": 50, "timeout_s": 5},
        )
        await provider.until(lambda s: s.jobs.rejections.get("kind-not-served", 0) >= 1)
        assert await provider.job(row["request_id"]) is None
        status = await provider.call("sandbox.status")
        assert status["state"] == "unavailable" and "namespaces" in status["reason"]


def test_result_content_is_json() -> None:
    content = json.dumps({"outcome": "failed", "artifacts": []})
    assert parse_result(content) == {"outcome": "failed", "artifacts": []}
    assert parse_result("not json") is None
