"""Stamp QA (seed 000): the legacy ``stamp_npz`` codec and reject-reason checks in :mod:`.quality_checks`."""
