"""Seed module path (seed 000, Gen7): the API lives in :mod:`dhs_gen.sources.hybrid`.

Kept so the specification"s imports work as written; project code imports from dhs_gen.sources.hybrid.
"""

from dhs_gen.sources.hybrid import gaussian_clump, generate_hybrid_source, sersic_template

__all__ = ["generate_hybrid_source", "sersic_template", "gaussian_clump"]
