"""`autopilotd mcp`: registry commands as MCP tools, over stdio."""
