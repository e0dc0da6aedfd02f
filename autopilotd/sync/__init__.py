"""History sync over the user's relays (service.py)."""
