"""Seed module path (seed 000, Uber): the API lives in :mod:`dhs_gen.augmentation.mixer`.

Kept so the specification"s imports work as written; project code imports from dhs_gen.augmentation.mixer.
"""

from dhs_gen.augmentation.mixer import DEFAULT_UBER, MixerConfig, assign_modes

__all__ = ["DEFAULT_UBER", "MixerConfig", "assign_modes"]
