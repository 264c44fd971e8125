"""Importable helpers for the function-pool tests (the pool imports them by name)."""
