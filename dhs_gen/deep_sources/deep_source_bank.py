"""Seed module path (seed 000, Gen6 bank builder): the API lives in :mod:`dhs_gen.sources.deep_bank`.

Kept so the specification"s imports work as written; project code imports from dhs_gen.sources.deep_bank.
"""

from dhs_gen.sources.deep_bank import build_deep_source_bank

__all__ = ["build_deep_source_bank"]
