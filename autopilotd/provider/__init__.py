"""The provider: Go Online, take NIP-90 jobs, run them locally, get paid (ARCHITECTURE §5)."""
