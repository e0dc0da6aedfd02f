"""Service units for systemd (Linux) and launchd (macOS), generated and installed per user."""
