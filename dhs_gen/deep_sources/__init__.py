"""Seed package path (seed 000, Gen6): :mod:`.deep_source_bank`, :mod:`.deep_source_sampler`; the code lives in :mod:`dhs_gen.sources`."""
