"""Gen7 procedural hybrid sources (Sersic + clumps + colour gradient); see :mod:`.sersic_clumps`."""

from dhs_gen.hybrid_sources.sersic_clumps import generate_hybrid_source

__all__ = ["generate_hybrid_source"]
