"""NIP-98 verifications per second: what `POST /api/session` spends on each Authorization.

    .venv/bin/python bench/nip98_verify.py [--seconds 3]

Signs 1,000 distinct auth events (1,000 keys, each for the session URL with a JSON body) and
verifies them round-robin with `verify_auth_header` for about `--seconds` each:
- valid: every check passes, the id and the BIP-340 signature included (the full cost);
- stale: `created_at` two minutes old, refused before the signature is checked (what a flood of
  replayed or old headers costs);
- forged: a valid header's signature replaced, refused by the signature check.
One process, one thread; the figures are per core.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Callable

from autopilotd.nostr.identity import generate_identity
from autopilotd.nostr.nip98 import Nip98Auth, auth_header, verify_auth_header

URL = "https://nexus.example/api/session"
BODY = b'{"bound_nostr_pubkey": "-", "client_id": "bench"}'
KEYS = 1000


def rate(headers: list[str], now: float, seconds: float, ok: bool) -> float:
    """Verifications per second over `headers`, round-robin, for about `seconds`."""
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for header in headers[:200]:
            result = verify_auth_header(header, url=URL, method="POST", body=BODY, now=now)
            assert isinstance(result, Nip98Auth) is ok
        done += 200
        headers = headers[200:] + headers[:200]
    return done / elapsed


def forge(header: str) -> str:
    event = json.loads(base64.b64decode(header.split(" ", 1)[1]))
    event["sig"] = "ab" * 64
    return "Nostr " + base64.b64encode(json.dumps(event).encode()).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    now = int(time.time())
    identities = [generate_identity() for _ in range(KEYS)]
    cases: list[tuple[str, Callable[[int], str], bool]] = [
        ("valid", lambda k: auth_header(identities[k], URL, "POST", BODY, now), True),
        ("stale", lambda k: auth_header(identities[k], URL, "POST", BODY, now - 120), False),
        ("forged", lambda k: forge(auth_header(identities[k], URL, "POST", BODY, now)), False),
    ]
    print(f"{'headers':<10}{'verifications/s':>17}{'µs each':>10}")
    for name, make, ok in cases:
        per_s = rate([make(k) for k in range(KEYS)], now, args.seconds, ok)
        print(f"{name:<10}{per_s:>17,.0f}{1e6 / per_s:>10.1f}")


if __name__ == "__main__":
    main()
