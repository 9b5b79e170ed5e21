"""Fixture: files starting with '_' are helpers, not workers (no error for them)."""
