"""Uber mixer: deterministic per-task choice of source mode and artifact profile.

Each task's ``source_mode`` and ``artifact_profile`` are two independent categorical draws
from hashes of its ``task_id`` (salts ``salt + "_src"`` and ``salt + "_art"``), so the mix is
reproducible row by row, independent of partitioning, and stratifiable afterwards (seed 000,
section Uber). Weights should come from the Gen6/7/8 ablations, not be guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhs_gen.augmentation.artifacts import ARTIFACT_PROFILES
from dhs_gen.errors import ConfigError
from dhs_gen.utils import categorical_from_hash

SOURCE_MODES = ("sersic", "cosmos", "deep", "hybrid")
ARTIFACT_PROFILE_NAMES = tuple(ARTIFACT_PROFILES)


def _check_weights(field: str, names_field: str, names: tuple, probs: tuple, allowed: tuple):
    if len(names) == 0:
        raise ConfigError(names_field, names, f"needs at least one name from {list(allowed)}")
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ConfigError(names_field, names, f"unknown names {bad}; allowed {list(allowed)}")
    if len(set(names)) != len(names):
        raise ConfigError(names_field, names, "names must be unique")
    if len(probs) != len(names):
        raise ConfigError(field, probs, f"needs one weight per name in {names_field} ({len(names)})")
    p = np.asarray(probs, dtype=float)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ConfigError(field, probs, "weights must be finite, >= 0, with a positive sum")


@dataclass(frozen=True)
class MixerConfig:
    """Weighted mixture of source modes and artifact profiles (weights need not sum to 1).

    Attributes
    ----------
    source_modes : tuple of str
        Names from ``SOURCE_MODES`` (sersic, cosmos, deep, hybrid).
    source_probs : tuple of float
        Non-negative weights, one per source mode (dimensionless).
    artifact_profiles : tuple of str
        Names from ``ARTIFACT_PROFILE_NAMES`` (none, mild, strong).
    artifact_probs : tuple of float
        Non-negative weights, one per artifact profile (dimensionless).
    salt : str
        Hash salt; changing it re-draws every task's assignment.
    """

    source_modes: tuple
    source_probs: tuple
    artifact_profiles: tuple
    artifact_probs: tuple
    salt: str = "uber_v1"

    def __post_init__(self):
        for name in ("source_modes", "source_probs", "artifact_profiles", "artifact_probs"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ConfigError(name, value, "must be a list")
            object.__setattr__(self, name, tuple(value))
        try:
            object.__setattr__(self, "source_probs", tuple(float(v) for v in self.source_probs))
            object.__setattr__(self, "artifact_probs", tuple(float(v) for v in self.artifact_probs))
        except (TypeError, ValueError):
            raise ConfigError("source_probs/artifact_probs", (self.source_probs, self.artifact_probs),
                              "weights must be numbers") from None
        _check_weights("source_probs", "source_modes", self.source_modes, self.source_probs, SOURCE_MODES)
        _check_weights("artifact_probs", "artifact_profiles", self.artifact_profiles, self.artifact_probs,
                       ARTIFACT_PROFILE_NAMES)
        if not isinstance(self.salt, str) or not self.salt:
            raise ConfigError("salt", self.salt, "must be a non-empty string")


DEFAULT_UBER = MixerConfig(
    source_modes=["cosmos", "deep", "hybrid"],
    source_probs=[0.34, 0.33, 0.33],        # Even split
    artifact_profiles=["none", "mild", "strong"],
    artifact_probs=[0.15, 0.70, 0.15],      # Mostly mild
    salt="uber_v1",
)


def assign_modes(task_id: str, cfg: MixerConfig) -> dict[str, str]:
    """Deterministically assign source_mode and artifact_profile based on task_id.

    Parameters
    ----------
    task_id : str
        The task's key.
    cfg : MixerConfig
        Names and weights.

    Returns
    -------
    dict
        ``{"source_mode": str, "artifact_profile": str}``.
    """
    sidx = categorical_from_hash(task_id, np.array(cfg.source_probs), salt=cfg.salt + "_src")
    aidx = categorical_from_hash(task_id, np.array(cfg.artifact_probs), salt=cfg.salt + "_art")
    return {
        "source_mode": cfg.source_modes[sidx],
        "artifact_profile": cfg.artifact_profiles[aidx],
    }
