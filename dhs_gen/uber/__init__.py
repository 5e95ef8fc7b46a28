"""Uber mixer: hash-assigned source mode and artifact profile per task; see :mod:`.mixer`."""

from dhs_gen.uber.mixer import DEFAULT_UBER, MixerConfig, assign_modes

__all__ = ["DEFAULT_UBER", "MixerConfig", "assign_modes"]
