"""Adapters: the concrete implementations of the ports (nostr-sdk, ldk-node, psionic over
HTTP), and in-memory fakes of them for fast tests. Only the composition root (app.py) picks
one; nothing else imports this package."""
