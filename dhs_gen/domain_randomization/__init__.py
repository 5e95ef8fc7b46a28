"""Gen8 domain randomization (imaging artifacts); see :mod:`.artifacts`."""

from dhs_gen.domain_randomization.artifacts import (
    ARTIFACT_PROFILES,
    ArtifactConfig,
    apply_domain_randomization,
    apply_domain_randomization_bands,
    artifact_config,
)

__all__ = ["ARTIFACT_PROFILES", "ArtifactConfig", "apply_domain_randomization", "apply_domain_randomization_bands",
           "artifact_config"]
