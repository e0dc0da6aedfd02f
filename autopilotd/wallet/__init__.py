"""The built-in Lightning wallet: seed, ledger, node port and adapters, service, commands."""
