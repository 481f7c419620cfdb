"""Scanning: batches in, per-site statistics out (see docs/architecture.md)."""
