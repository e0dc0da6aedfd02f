"""The web UI: jinja2 panes rendered from the Snapshot (the web UI issue grows it)."""
