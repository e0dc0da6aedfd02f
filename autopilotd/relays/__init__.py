"""The relays service: the daemon's one relay pool, run, followed and shown."""
