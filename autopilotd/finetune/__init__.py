"""Fine-tuning: tenants, the OpenAI-compatible tenant API, the eval gate, promotion."""
