"""The buyer: submit NIP-90 jobs to the network and pay the provider that delivers."""
