"""The Nostr layer of the earn loop: identity (NIP-06), a local relay, a relay pool, NIP-90.

Modules, each documented in its docstring and in docs/nostr.md:

- `identity`: the daemon's keys derived from the wallet mnemonic (NIP-06).
- `events`: untrusted events as plain data, size/shape caps, the id and signature check.
- `reasons`: the fixed set of rejection reasons and their counters.
- `intake`: provider-side validation of job requests, cheapest check first.
- `nip90`: the typed job request, builders for requests, feedback, results, NIP-89 handlers.
- `crypto`: NIP-44 / NIP-04 for encrypted requests.
- `port`: the pool's types (health rows, filters, publish reports) and `RelayPoolPort`.
- `pool`: a relay pool with a health row per relay, catch-up, dedupe and publish reports.
- `fake`: an in-memory pool for fast tests of the services.
- `relay`: a loopback relay on nostr-sdk's LocalRelay, and `autopilotd relay`.
"""
