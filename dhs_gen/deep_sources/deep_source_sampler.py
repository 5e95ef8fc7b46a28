"""Seed module path (seed 000, Gen6 sampler): the API lives in :mod:`dhs_gen.sources.deep_sampler`.

Kept so the specification"s imports work as written; project code imports from dhs_gen.sources.deep_sampler.
"""

from dhs_gen.sources.deep_sampler import DeepSourceBank

__all__ = ["DeepSourceBank"]
