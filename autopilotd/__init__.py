"""autopilotd: sell local compute on Nostr (NIP-90), get paid over Lightning."""

__version__ = "0.1.0"
