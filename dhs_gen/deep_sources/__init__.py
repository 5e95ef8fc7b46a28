"""Gen6 deep ground-based source templates: bank builder and Stage-4c sampler (seed 000, Gen6)."""

from dhs_gen.deep_sources.deep_source_bank import build_deep_source_bank
from dhs_gen.deep_sources.deep_source_sampler import DeepSourceBank

__all__ = ["DeepSourceBank", "build_deep_source_bank"]
