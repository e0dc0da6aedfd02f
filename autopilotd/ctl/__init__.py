"""autopilotctl: the thin CLI over JSON-RPC, found through the manifest."""
