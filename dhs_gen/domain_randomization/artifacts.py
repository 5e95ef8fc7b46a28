"""Seed module path (seed 000, Gen8): the API lives in :mod:`dhs_gen.augmentation.artifacts`.

Kept so the specification"s imports work as written; project code imports from dhs_gen.augmentation.artifacts.
"""

from dhs_gen.augmentation.artifacts import (
    ARTIFACT_PROFILES,
    ArtifactConfig,
    apply_domain_randomization,
    apply_domain_randomization_bands,
    artifact_config,
)

__all__ = ["ARTIFACT_PROFILES", "ArtifactConfig", "apply_domain_randomization", "apply_domain_randomization_bands", "artifact_config"]
