"""Sandbox jobs: the service, and safe access to their workspaces."""
