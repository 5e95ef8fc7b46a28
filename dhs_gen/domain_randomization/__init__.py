"""Seed package path (seed 000, Gen8): :mod:`.artifacts`; the code lives in :mod:`dhs_gen.augmentation.artifacts`."""
