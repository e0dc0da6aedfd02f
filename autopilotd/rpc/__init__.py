"""The control plane: JSON-RPC 2.0 over aiohttp at /rpc, and the web UI on the same server."""
