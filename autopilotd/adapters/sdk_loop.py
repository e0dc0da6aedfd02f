"""The event loop lent to nostr-sdk for the Python objects it calls back from its own threads.

A relay's database and write policy, and a client's NIP-42 authenticator, are Python objects
the SDK calls from its own threads; UniFFI runs those async callbacks on the event loop
registered with `nostr_sdk.uniffi_set_event_loop` (the SDK's one way to do it; without it every
callback fails with "no running event loop": a relay takes no event, an AUTH challenge is never
answered). The setting is process-wide and UniFFI then runs every nostr-sdk call on that loop,
so it is lent only while something needs it (`LoopLoan`) and cleared after the last holder
lets go: a later event loop (the next test's) must not find a closed one there.
"""

from __future__ import annotations

import asyncio

import nostr_sdk as sdk


class LoopLoan:
    """The running loop, lent to UniFFI until `release` (see the module docstring)."""

    holders = 0  # the SDK's setting is process-wide, so is this count

    def __init__(self) -> None:
        sdk.uniffi_set_event_loop(asyncio.get_running_loop())
        LoopLoan.holders += 1
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            LoopLoan.holders -= 1
            if LoopLoan.holders == 0:
                sdk.uniffi_set_event_loop(None)
