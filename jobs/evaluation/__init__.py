"""Judging a lens finder: scoring at scale, metrics, the leakage and anchor gates, realism gates, reports."""
