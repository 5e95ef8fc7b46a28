"""Seed package path (seed 000, Uber): :mod:`.mixer`; the code lives in :mod:`dhs_gen.augmentation.mixer`."""
