"""`autopilotd nexus`: seed demand for new providers. A relay, Nostr-authenticated provider
sessions, starter jobs on assignment leases paid from the Nexus's own treasury, public stats.
See docs/nexus.md."""
