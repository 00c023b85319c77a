"""Bundled data and experiments that reproduce the classic results, using the public API only."""
