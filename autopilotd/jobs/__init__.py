"""Provider jobs: the persistent NIP-90 job state machine, its outbox, and earnings."""
