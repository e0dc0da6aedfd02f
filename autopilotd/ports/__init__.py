"""Ports: what services need from the world, as Protocols over the project's own types."""
