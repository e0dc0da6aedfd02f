"""Starter demand from a Nexus: the provider's side (service.py)."""
