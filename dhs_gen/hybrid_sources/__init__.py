"""Seed package path (seed 000, Gen7): :mod:`.sersic_clumps`; the code lives in :mod:`dhs_gen.sources.hybrid`."""
