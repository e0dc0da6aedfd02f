"""psionic: a small torch inference stack (text generation and embeddings) served over HTTP.

The daemon reaches psionic only through its HTTP API (see docs/psionic.md); nothing in
``autopilotd`` imports this package or torch.
"""

__version__ = "0.1.0"
