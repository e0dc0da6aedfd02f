"""Local inference for jobs: psionic, reached over HTTP (the daemon never imports torch)."""
